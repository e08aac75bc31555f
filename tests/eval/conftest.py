"""Fixtures of tests/eval: what the two ranks of the shared torchrun launch (``two_ranks`` in
tests/conftest.py, ``tests/two_ranks.py``) gathered; a small classifier trained for an epoch, which
the ``mvmae predict`` tests (files and streams) share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import synth_data

# Both paths (resnet18 on 64-px I-frames: the JPEG round trip matters), 2 segments of 16 frames.
TRAIN = {
    "model": {"inputs": "both", "motion_size": "micro", "context_model": "resnet18", "num_segments": 2,
              "dim": 32, "temporal_heads": 4},
    "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
    "epochs": 1, "phase1_epochs": 0, "batch_size": 4, "workers": 0, "lr": 1e-3, "warmup_epochs": 0,
    "label_smoothing": 0.0, "flip_prob": 0.0, "crop_area": [0.8, 1.0],
}


@pytest.fixture(scope="session")
def gathered(two_ranks: Path) -> list[dict]:
    """What each of the two torchrun ranks ended with after ``two_ranks.gather``."""
    return [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """The synthetic shards (tests/synth_data.py: 128x160 clips) and a classifier trained on them
    for an epoch (with one torch thread, as ``one_intra_op_thread``): ``{**synth_shards, "ckpt"}``."""
    import torch

    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.train.config import load_config
    from mvmae.train.finetune import FinetuneConfig, Finetuner

    shards = synth_data.synth_shards(tmp_path_factory)
    run = tmp_path_factory.mktemp("predict") / "run"
    cfg = load_config(FinetuneConfig, None, {**TRAIN, "train": [shards["train"]], "out": str(run)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Finetuner(cfg, StreamingMetrics).run()
    finally:
        torch.set_num_threads(threads)
    return {**shards, "ckpt": run / "last.pt"}
