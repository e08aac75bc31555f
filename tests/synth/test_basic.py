"""mvmae synth: real H.264, deterministic, classes told apart by motion only."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from mvmae.cli import main
from mvmae.extract.probe import probe_video
from mvmae.extract.video import extract_video
from mvmae.synth import PATTERNS, SynthConfig, make_dataset


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(main, ["synth", str(out), "--classes", "4", "--clips-per-class", "3",
                                       "--seed", "7"])
    assert result.exit_code == 0, result.output
    return out


def test_lists_and_videos(synth_dir):
    train = (synth_dir / "train.txt").read_text().split("\n")[:-1]
    val = (synth_dir / "val.txt").read_text().split("\n")[:-1]
    classes = (synth_dir / "classes.txt").read_text().split()
    assert classes == list(PATTERNS)[:4]
    assert len(train) == 8 and len(val) == 4  # 3 per class: 1 val (25%, at least one), 2 train
    for line in train + val:
        rel, label = line.rsplit(maxsplit=1)
        assert label in classes and f"/{label}/" in rel
        assert (synth_dir / rel).is_file()


def test_real_h264_with_b_frames(synth_dir):
    rel = (synth_dir / "train.txt").read_text().split()[0]
    report = probe_video(synth_dir / rel)
    assert report.codec == "h264" and report.num_b > 0 and report.max_num_ref_frames >= 3
    assert (report.height, report.width) == (128, 160) and report.num_frames == 48


def test_deterministic_for_a_seed(tmp_path):
    cfg = SynthConfig(num_classes=2, clips_per_class=1, num_frames=12, seed=3, val_ratio=0)
    a, b = make_dataset(tmp_path / "a", cfg), make_dataset(tmp_path / "b", cfg)
    rel = a["train"].read_text().split()[0]
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    other = make_dataset(tmp_path / "c", SynthConfig(num_classes=2, clips_per_class=1, num_frames=12,
                                                     seed=4, val_ratio=0))
    assert (tmp_path / "c" / rel).read_bytes() != (tmp_path / "a" / rel).read_bytes()
    assert b["train"].read_text() == other["train"].read_text()


def _actor_motion(path) -> np.ndarray:
    """Mean camera-compensated motion (dx, dy) of the cells that move against the ground."""
    f = extract_video(path)
    rel = []
    for t in range(f.num_frames):
        if f.valid[t].sum() < 10:
            continue
        field = f.mv[t][:, f.valid[t]]  # (2, n)
        field = field - np.median(field, axis=1, keepdims=True)
        moving = np.linalg.norm(field, axis=0) > 0.5
        if moving.any():
            rel.append(field[:, moving].mean(axis=1))
    return np.mean(rel, axis=0)


@pytest.mark.parametrize("name, axis, sign", [("walk_right", 0, 1), ("walk_left", 0, -1),
                                              ("walk_down", 1, 1), ("walk_up", 1, -1)])
def test_class_is_the_motion_relative_to_the_ground(synth_dir, name, axis, sign):
    for rel in (synth_dir / "train.txt").read_text().split("\n"):
        if rel.endswith(f" {name}"):
            motion = _actor_motion(synth_dir / rel.rsplit(maxsplit=1)[0])
            assert sign * motion[axis] > 0.4, motion  # the actor walks that way over the ground
            assert abs(motion[1 - axis]) < 0.5 * abs(motion[axis]), motion


def test_invalid_config():
    with pytest.raises(ValueError):
        SynthConfig(num_classes=9)
    with pytest.raises(ValueError):
        SynthConfig(size=(127, 160))
