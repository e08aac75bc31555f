"""``mvmae datasets uavhuman``: CSv1/CSv2 lists from a fake tree of correctly named real H.264 files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from dataset_trees import place

from mvmae.cli import main
from mvmae.datasets import uavhuman as uav
from mvmae.datasets.lists import DatasetError
from mvmae.shards.videolist import read_inputs


def uav_name(subject: int, action: int, replicate: int = 0, suffix: str = ".avi") -> str:
    return f"P{subject:03d}S01G10B00H10UC102000LC092000A{action:03d}R{replicate}_09131758{suffix}"


# Subject 0: train in both; 2: train in v1 only; 3: train in v2 only; 1: test in both.
SUBJECTS = {0: ("train", "train"), 2: ("train", "test"), 3: ("test", "train"), 1: ("test", "test")}
ACTIONS = (0, 31, 154)
BAD_NAMES = [
    "P070S01G10B00H10UC102000LC092000A155R0_09131758.avi",  # action outside 0..154
    "P119S01G10B00H10UC102000LC092000A001R0_09131758.avi",  # subject outside 0..118
    "P070S01G10B00A001R0_09131758.avi",                       # fields missing
    "holiday.avi",
]


@pytest.fixture(scope="module")
def uav_tree(tiny_clips, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uavhuman")
    for subject in SUBJECTS:
        for action in ACTIONS:
            place(tiny_clips[".avi"], root / "all_rgb" / uav_name(subject, action))
    place(tiny_clips[".avi"], root / "more" / uav_name(0, 31, replicate=1))
    for name in BAD_NAMES:
        place(tiny_clips[".avi"], root / "all_rgb" / name)
    (root / "all_rgb" / "README.txt").write_text("not a video: ignored\n")
    return root


def test_published_subject_lists_are_the_readme_ones():
    """89 of 119 subjects train in each protocol (the README's lists, as FACTS.md counts them)."""
    assert len(uav.CSV1_TRAIN_SUBJECTS) == len(uav.CSV2_TRAIN_SUBJECTS) == 89
    assert max(uav.CSV1_TRAIN_SUBJECTS | uav.CSV2_TRAIN_SUBJECTS) < uav.NUM_SUBJECTS
    assert {0, 2, 118} <= uav.CSV1_TRAIN_SUBJECTS and {1, 3, 4} .isdisjoint(uav.CSV1_TRAIN_SUBJECTS)
    assert {0, 3, 4, 118} <= uav.CSV2_TRAIN_SUBJECTS and {1, 2, 7}.isdisjoint(uav.CSV2_TRAIN_SUBJECTS)
    assert len(uav.CLASSES) == 155 and uav.CLASSES[31] == "A031"


@pytest.mark.parametrize("name, reason", [
    (BAD_NAMES[0], "action A155"), (BAD_NAMES[1], "subject P119"), (BAD_NAMES[2], "not a UAV-Human name"),
])
def test_bad_names_say_why(name, reason):
    with pytest.raises(uav.UavHumanNameError, match=reason):
        uav.parse_name(Path(name))


def test_name_fields():
    name = uav.parse_name(Path("P070S01G10B00H10UC102000LC092000A031R0_09131758.avi"))
    assert (name.subject, name.setup, name.action, name.replicate) == (70, 1, 31, 0)


def test_cli_builds_both_protocols(uav_tree, tmp_path):
    out = tmp_path / "lists"
    result = CliRunner().invoke(main, ["datasets", "uavhuman", str(uav_tree), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "classes.json").read_text()) == uav.CLASSES
    for v, protocol in enumerate(["csv1", "csv2"]):
        lists = {split: read_inputs(out / protocol / f"{split}.txt")[0] for split in ("train", "test")}
        subjects = {split: {uav.parse_name(e.path).subject for e in entries} for split, entries in lists.items()}
        assert subjects["train"].isdisjoint(subjects["test"])
        assert subjects == {split: {s for s, sp in SUBJECTS.items() if sp[v] == split} for split in lists}
        for entries in lists.values():
            for entry in entries:
                assert entry.path.is_file() and entry.path.is_absolute()
                assert entry.label == uav.parse_name(entry.path).action
        assert len(lists["train"]) + len(lists["test"]) == len(SUBJECTS) * len(ACTIONS) + 1
    # The printed counts: per split, then per class; the bad names reported, not fatal.
    assert "csv1     train         7         2        3" in result.output
    assert "csv2     test          6         2        3" in result.output
    assert any(line.split() == ["A031", "3", "2", "3", "2"] for line in result.output.splitlines())
    assert "4 file(s) skipped" in result.output
    skipped = (out / "skipped.txt").read_text()
    assert all(name in skipped for name in BAD_NAMES) and "README.txt" not in skipped


def test_lists_extract_to_shards(uav_tree, tmp_path):
    """The CSv2 test list goes through `mvmae extract run` as it is, labels kept."""
    out = tmp_path / "lists"
    assert CliRunner().invoke(main, ["datasets", "uavhuman", str(uav_tree), "--out", str(out),
                                     "--quiet"]).exit_code == 0
    shards = tmp_path / "shards"
    result = CliRunner().invoke(main, ["extract", "run", str(out / "csv2" / "test.txt"), str(shards),
                                       "--split", "test", "--workers", "0", "--iframe-size", "32"])
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (shards / "test-manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 6 and all(row["status"] == "ok" for row in manifest)
    assert sorted(row["label"] for row in manifest) == [0, 0, 31, 31, 154, 154]


def test_missing_root_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["datasets", "uavhuman", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "nope" in result.output


def test_find_videos_refuses_a_file(tmp_path):
    from mvmae.datasets.lists import find_videos
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetError, match="no such folder"):
        find_videos(tmp_path / "f")
