"""make_dataset and ``mvmae synth`` for the trajectories preset: splits, the unlabelled pool,
determinism, and lists that ``mvmae extract run`` reads."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mvmae.cli import main
from mvmae.extract.probe import probe_video
from mvmae.job.job import JobConfig, run_job
from mvmae.shards.videolist import read_inputs
from mvmae.synth import SynthConfig, make_dataset, pool_classes, split_counts

SMALL = dict(preset="trajectories", num_classes=3, clips_per_class=3, num_frames=12, val_ratio=0.34,
             test_ratio=0.34, seed=5)


def _lines(path):
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("traj")
    result = CliRunner().invoke(main, [
        "synth", str(out), "--preset", "trajectories", "--classes", "3", "--clips-per-class", "3",
        "--frames", "12", "--val-ratio", "0.34", "--test-ratio", "0.34", "--unlabelled", "4",
        "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "test.txt" in result.output and "unlabelled.txt" in result.output
    return out


def test_cli_writes_splits_pool_and_config(cli_dir):
    classes = _lines(cli_dir / "classes.txt")
    assert classes == ["turn_left", "turn_right", "circle_ccw"]
    train, val, test = (_lines(cli_dir / f"{s}.txt") for s in ("train", "val", "test"))
    assert len(train) == len(val) == len(test) == 3  # one clip of each class in each split
    assert len({*train, *val, *test}) == 9
    pool = _lines(cli_dir / "unlabelled.txt")
    assert len(pool) == 4
    for line in pool:
        rel, label = line.rsplit(maxsplit=1)
        assert label in classes and label not in rel  # the true class, not in the file name
        assert rel.startswith("unlabelled/") and (cli_dir / rel).is_file()
    config = json.loads((cli_dir / "synth.json").read_text())
    assert config["preset"] == "trajectories" and config["num_unlabelled"] == 4
    assert config["size"] == [128, 160] and config["actor_px"] == 40


def test_real_h264_with_one_i_frame(cli_dir):
    """libx264 with B-frames and 3 references; one I-frame per clip (GOP 250 > 12 frames)."""
    rel = _lines(cli_dir / "train.txt")[0].rsplit(maxsplit=1)[0]
    report = probe_video(cli_dir / rel)
    assert report.codec == "h264" and report.num_b > 0 and report.max_num_ref_frames >= 3
    assert (report.num_i, report.num_frames, report.height, report.width) == (1, 12, 128, 160)


def test_lists_are_read_by_extract(cli_dir):
    for split in ("train", "val", "test", "unlabelled"):
        entries, classes = read_inputs(cli_dir / f"{split}.txt")
        assert all(e.path.is_file() for e in entries)
        assert set(classes) <= set(_lines(cli_dir / "classes.txt"))


def test_pool_extracts_to_shards(cli_dir, tmp_path):
    """``mvmae extract run unlabelled.txt`` (here its job, in this process) shards the whole pool."""
    summary = run_job(JobConfig(input=cli_dir / "unlabelled.txt", out_dir=tmp_path, workers=0,
                                shard_size=2))
    assert (summary.num_ok, summary.num_failed, summary.num_shards) == (4, 0, 2)


def test_same_seed_same_clips_whatever_the_pool(cli_dir, tmp_path):
    """Without the pool, the labelled clips are byte-identical; the pool's clips are none of them."""
    lists = make_dataset(tmp_path, SynthConfig(**SMALL))
    assert "unlabelled" not in lists and not (tmp_path / "unlabelled.txt").exists()
    labelled = {}
    for split in ("train", "val", "test"):
        assert _lines(lists[split]) == _lines(cli_dir / f"{split}.txt")
        for line in _lines(lists[split]):
            rel = line.rsplit(maxsplit=1)[0]
            labelled[rel] = (tmp_path / rel).read_bytes()
            assert labelled[rel] == (cli_dir / rel).read_bytes()
    pool = [(cli_dir / line.rsplit(maxsplit=1)[0]).read_bytes()
            for line in _lines(cli_dir / "unlabelled.txt")]
    assert not set(pool) & set(labelled.values()) and len(set(pool)) == len(pool)


def test_fewer_classes_keep_each_class_clips(cli_dir, tmp_path):
    """A class's clips depend on (seed, class, index) only: --classes 2 gives the same bytes."""
    make_dataset(tmp_path, SynthConfig(**{**SMALL, "num_classes": 2, "clips_per_class": 1,
                                          "val_ratio": 0, "test_ratio": 0}))
    rel = "videos/turn_right/turn_right_000.mp4"
    assert (tmp_path / rel).read_bytes() == (cli_dir / rel).read_bytes()


@pytest.mark.slow  # starts 2 processes
def test_workers_give_the_same_bytes(cli_dir, tmp_path):
    make_dataset(tmp_path, SynthConfig(**{**SMALL, "num_unlabelled": 2}), num_workers=2)
    for line in _lines(cli_dir / "unlabelled.txt")[:2] + _lines(cli_dir / "train.txt"):
        rel = line.rsplit(maxsplit=1)[0]
        assert (tmp_path / rel).read_bytes() == (cli_dir / rel).read_bytes()


@pytest.mark.parametrize("n, val, test, expected", [
    (10, 0.2, 0.2, (2, 2)), (3, 0.25, 0.25, (1, 1)), (2, 0.25, 0.25, (1, 0)), (1, 0.5, 0.4, (0, 0)),
    (20, 0.1, 0.0, (2, 0)),
])
def test_split_counts(n, val, test, expected):
    cfg = SynthConfig(preset="trajectories", clips_per_class=n, val_ratio=val, test_ratio=test)
    assert split_counts(cfg) == expected


@pytest.mark.parametrize("kwargs, words", [
    ({"preset": "nope"}, "preset"),
    ({"preset": "trajectories", "num_classes": 13}, "num_classes"),
    ({"preset": "trajectories", "val_ratio": 0.5, "test_ratio": 0.5}, "val_ratio + test_ratio"),
    ({"preset": "trajectories", "speed_range": (2.0, 1.0)}, "speed_range"),
    ({"preset": "trajectories", "num_distractors": (2, 1)}, "num_distractors"),
    ({"num_unlabelled": -1}, "num_unlabelled"),
])
def test_invalid_config(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("+", r"\+")):
        SynthConfig(**kwargs)


def test_cli_rejects_a_bad_config(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path), "--classes", "10"])
    assert result.exit_code != 0 and "num_classes must be 2..8 for preset basic" in result.output


def test_pool_is_balanced_and_grows_by_appending():
    big = pool_classes(SynthConfig(preset="trajectories", num_unlabelled=30, seed=2))
    counts = [big.count(name) for name in SynthConfig(preset="trajectories").classes]
    assert sorted(set(counts)) == [2, 3] and sum(counts) == 30
    assert pool_classes(SynthConfig(preset="trajectories", num_unlabelled=13, seed=2)) == big[:13]
    assert pool_classes(SynthConfig(preset="trajectories", num_unlabelled=30, seed=3)) != big


def test_basic_preset_takes_a_pool_and_a_test_split_too(tmp_path):
    """basic's labelled clips stay those of its single stream whatever the pool."""
    base = dict(num_classes=2, clips_per_class=3, num_frames=12, seed=3)
    plain = make_dataset(tmp_path / "a", SynthConfig(**base))
    pooled = make_dataset(tmp_path / "b", SynthConfig(**base, test_ratio=0.3, num_unlabelled=2))
    assert len(_lines(pooled["unlabelled"])) == 2 and len(_lines(pooled["test"])) == 2
    for line in _lines(plain["train"]) + _lines(plain["val"]):
        rel = line.rsplit(maxsplit=1)[0]
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
