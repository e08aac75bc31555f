"""Fixtures of the training tests: a small motion-defined synthetic dataset in shards, and a
codebook learnt from it (real H.264 clips through ``run_job``, no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest

# 4 classes x 4 clips of 32 frames, 128x160 px; val_ratio 0.25 puts one clip per class in val:
# 12 train videos (3 shards of 4) and 4 val videos (1 shard).
SYNTH_CLASSES, SYNTH_CLIPS_PER_CLASS, SYNTH_FRAMES = 4, 4, 32
SHARD_SIZE = 4

# The codebook the pretraining tests share: small enough that a micro model runs an epoch in
# about a second (16 frames, 8x8 cells -> 8 x 8 x 8 = 512 tokens of dim 4 per clip).
CODEBOOK_SIZE, CODEBOOK_FRAMES, CODEBOOK_MV_SIZE = 32, 16, 8


def _brace(folder: Path, split: str) -> str:
    """The brace pattern of every ``<split>-NNNNNN.tar`` in ``folder`` (they are numbered from 0)."""
    num_shards = len(list(folder.glob(f"{split}-[0-9]*.tar")))
    assert num_shards > 0, f"no {split} shards in {folder}"
    return str(folder / f"{split}-{{000000..{num_shards - 1:06d}}}.tar")


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory) -> dict:
    """``mvmae.synth`` dataset extracted by ``run_job`` into shards of 4 videos (about 5 s).

    ``{"dir": dataset folder (videos/, train.txt, val.txt), "shards": shard folder, "train":
    brace pattern of the 3 train shards (12 samples), "val": brace pattern of the 1 val shard
    (4 samples), "num_train": 12, "num_val": 4}``. Read-only for tests.
    """
    from mvmae.shards.job import JobConfig, run_job
    from mvmae.synth import SynthConfig, make_dataset

    root = tmp_path_factory.mktemp("synth_shards")
    cfg = SynthConfig(num_classes=SYNTH_CLASSES, clips_per_class=SYNTH_CLIPS_PER_CLASS,
                      num_frames=SYNTH_FRAMES, size=(128, 160))
    lists = make_dataset(root / "data", cfg)
    shards = root / "shards"
    counts = {}
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=lists[split], out_dir=shards, split=split, shard_size=SHARD_SIZE))
        assert summary.num_failed == 0 and not summary.shards_failed, summary
        counts[split] = summary.num_samples
    return {"dir": root / "data", "shards": shards, "train": _brace(shards, "train"),
            "val": _brace(shards, "val"), "num_train": counts["train"], "num_val": counts["val"]}


@pytest.fixture(scope="session")
def synth_codebook(synth_shards, tmp_path_factory) -> Path:
    """A 32-code codebook of the train shards (16 frames, 8x8 cells, tubelet 2x1, one centre clip
    per video), learnt once per session by ``build_codebook`` (what ``mvmae codebook`` runs).
    Read-only for tests."""
    from mvmae.train.codebook import CodebookConfig, build_codebook
    from mvmae.train.tokenizer import TokenSpec

    spec = TokenSpec(num_frames=CODEBOOK_FRAMES, mv_size=CODEBOOK_MV_SIZE)
    book = build_codebook([synth_shards["train"]], spec, CodebookConfig(size=CODEBOOK_SIZE),
                          clips_per_video=1, batch_size=8, workers=0)
    return book.save(tmp_path_factory.mktemp("synth_codebook") / "codebook.npz")


# The acceptance dataset of the fine-tuning tests: enough validation clips for a top-1 that
# means something (6 per class; one error costs 4.2 points), few enough training clips that an
# epoch stays about a second. 4 classes x 24 clips of 32 frames, val_ratio 0.25 -> 18 train and
# 6 val clips per class: 72 train videos (9 shards of 8), 24 val videos (3 shards of 8).
MOTION_CLIPS_PER_CLASS, MOTION_VAL_RATIO, MOTION_SHARD_SIZE = 24, 0.25, 8


@pytest.fixture(scope="session")
def motion_shards(tmp_path_factory) -> dict:
    """A larger ``mvmae.synth`` dataset in shards of 8 (about 15 s): the classes differ by the
    direction of the actor's motion alone, so only the motion path can tell them apart.

    Same keys as ``synth_shards``: ``{"dir", "shards", "train", "val", "num_train": 72,
    "num_val": 24}``. Read-only for tests.
    """
    from mvmae.shards.job import JobConfig, run_job
    from mvmae.synth import SynthConfig, make_dataset

    root = tmp_path_factory.mktemp("motion_shards")
    cfg = SynthConfig(num_classes=SYNTH_CLASSES, clips_per_class=MOTION_CLIPS_PER_CLASS,
                      num_frames=SYNTH_FRAMES, size=(128, 160), val_ratio=MOTION_VAL_RATIO)
    lists = make_dataset(root / "data", cfg)
    shards = root / "shards"
    counts = {}
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=lists[split], out_dir=shards, split=split,
                                    shard_size=MOTION_SHARD_SIZE))
        assert summary.num_failed == 0 and not summary.shards_failed, summary
        counts[split] = summary.num_samples
    return {"dir": root / "data", "shards": shards, "train": _brace(shards, "train"),
            "val": _brace(shards, "val"), "num_train": counts["train"], "num_val": counts["val"]}
