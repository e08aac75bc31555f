"""``mvmae datasets kinetics``: lists from annotation CSVs and a tree of real H.264 clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from dataset_trees import place

from mvmae.cli import main
from mvmae.datasets import kinetics as kin
from mvmae.shards.videolist import read_inputs

HEADER = "label,youtube_id,time_start,time_end,split\n"
TRAIN_ROWS = [("abseiling", "aaa-111", 10, 20), ("abseiling", "bbb_222", 0, 10),
              ("zumba", "ccc333", 5, 15), ("zumba", "gone01", 30, 40),      # gone01: never downloaded
              ("air drumming", "ddd444", 100, 110)]
VAL_ROWS = [("zumba", "eee555", 1, 11), ("abseiling", "gone02", 2, 12)]


@pytest.fixture(scope="module")
def kinetics_tree(tiny_clips, tmp_path_factory) -> tuple[list[Path], Path]:
    """train.csv and validate.csv, and ROOT/<split>/<label>/<id>_<start>_<end>.mp4 for the clips
    that 'downloaded' (one of them in another folder: names are what count)."""
    folder = tmp_path_factory.mktemp("kinetics")
    root = folder / "videos"
    csvs = []
    for split, rows in (("train", TRAIN_ROWS), ("val", VAL_ROWS)):
        csv = folder / f"{split}.csv"
        csv.write_text(HEADER + "".join(f"{label},{yid},{start},{end},{split}\n" for label, yid, start, end in rows))
        csvs.append(csv)
        for label, yid, start, end in rows:
            if not yid.startswith("gone"):
                sub = "elsewhere" if yid == "ddd444" else f"{split}/{label}"
                place(tiny_clips[".mp4"], root / sub / f"{yid}_{start:06d}_{end:06d}.mp4")
    return csvs, root


def test_clip_name():
    assert kin.clip_name("---QUuC4vJs", "84", "94") == "---QUuC4vJs_000084_000094"
    assert kin.clip_name("x", "1.0", "11.0") == "x_000001_000011"


def test_cli_lists_splits_and_missing(kinetics_tree, tmp_path):
    csvs, root = kinetics_tree
    out = tmp_path / "lists"
    result = CliRunner().invoke(main, ["datasets", "kinetics", *map(str, csvs), str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    classes = json.loads((out / "classes.json").read_text())
    assert classes == ["abseiling", "air drumming", "zumba"]
    train, _ = read_inputs(out / "train.txt")
    val, _ = read_inputs(out / "val.txt")
    assert [(e.path.name, classes[e.label]) for e in train] == [
        ("aaa-111_000010_000020.mp4", "abseiling"), ("bbb_222_000000_000010.mp4", "abseiling"),
        ("ccc333_000005_000015.mp4", "zumba"), ("ddd444_000100_000110.mp4", "air drumming")]
    assert [(e.path.name, classes[e.label]) for e in val] == [("eee555_000001_000011.mp4", "zumba")]
    assert (out / "missing.txt").read_text().splitlines() == ["train: gone01_000030_000040",
                                                              "val: gone02_000002_000012"]
    assert any(line.split() == ["train", "4", "1", "3"] for line in result.output.splitlines())
    assert any(line.split() == ["val", "1", "1", "1"] for line in result.output.splitlines())
    assert "2 clip(s) listed but not found" in result.output


def test_unlabelled_rows_are_reported(kinetics_tree, tmp_path):
    csvs, root = kinetics_tree
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("youtube_id,time_start,time_end,split\nfff666,0,10,test\n")
    split_set, missing = kin.build_splits([csvs[0], test_csv], root)
    assert set(split_set.splits) == {"train"} and len(missing) == 1
    assert split_set.problems == [f"{test_csv}: fff666_000000_000010: no label (a test CSV?)"]


def test_a_csv_without_the_columns_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.mp4,3\n")
    result = CliRunner().invoke(main, ["datasets", "kinetics", str(bad), str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"error: {bad}: not a Kinetics annotation CSV: no column youtube_id, time_start, time_end, split "
        "(header ['path', 'label'])")
