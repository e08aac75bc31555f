"""``mvmae datasets folders``: a seeded, stratified train/val split of class subfolders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from dataset_trees import place

from mvmae.cli import main
from mvmae.datasets import folders as fold
from mvmae.shards.videolist import read_inputs

SIZES = {"jump": 10, "run": 5, "sit": 1, "wave": 2}


@pytest.fixture(scope="module")
def class_tree(tiny_clips, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for name, size in SIZES.items():
        for i in range(size):
            place(tiny_clips[".mp4"], root / name / ("nested" if i % 3 else "") / f"{name}{i}.mp4")
    (root / "empty").mkdir()
    return root


@pytest.mark.parametrize("n, ratio, expected", [(10, 0.2, 2), (5, 0.2, 1), (2, 0.2, 1), (1, 0.2, 0),
                                                (3, 0.9, 2), (10, 0.0, 0)])
def test_num_val(n, ratio, expected):
    assert fold.num_val(n, ratio) == expected


def _split(root: Path, out: Path, seed: int) -> tuple[list, list, list[str]]:
    result = CliRunner().invoke(main, ["datasets", "folders", str(root), "--out", str(out), "--seed", str(seed)])
    assert result.exit_code == 0, result.output
    classes = json.loads((out / "classes.json").read_text())
    return read_inputs(out / "train.txt")[0], read_inputs(out / "val.txt")[0], classes


def test_stratified_and_seeded(class_tree, tmp_path):
    train, val, classes = _split(class_tree, tmp_path / "a", seed=0)
    assert classes == ["empty", "jump", "run", "sit", "wave"]
    expected_counts = ((val, {"jump": 2, "run": 1, "wave": 1}), (train, {"jump": 8, "run": 4, "sit": 1, "wave": 1}))
    for split, expected in expected_counts:
        counts: dict[str, int] = {}
        for entry in split:
            assert entry.path.parent.name in (classes[entry.label], "nested")
            counts[classes[entry.label]] = counts.get(classes[entry.label], 0) + 1
        assert counts == expected
    assert not {e.path for e in train} & {e.path for e in val}
    again = _split(class_tree, tmp_path / "b", seed=0)
    other = _split(class_tree, tmp_path / "c", seed=1)
    assert [e.path for e in again[1]] == [e.path for e in val]
    assert [e.path for e in other[1]] != [e.path for e in val]
    assert (tmp_path / "a" / "skipped.txt").read_text().strip().endswith("empty: no videos")


def test_no_subfolders_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["datasets", "folders", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.output.strip() == f"error: {tmp_path}: no class subfolders"
