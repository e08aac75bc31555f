"""``examples/own_model.py`` runs as the README shows it: a model of one's own trained from mvmae
shards through ``mvmae.dataloader`` (on the synthetic shards, in a fresh process); and the
loader's contract (batch shapes, every sample once in eval, the same batches for a seed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvmae.dataloader import ClipConfig, class_names, clip_loader

REPO = Path(__file__).resolve().parents[2]


def test_own_model_example_trains_and_validates(synth_shards) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(REPO / "examples" / "own_model.py"), "--train", synth_shards["train"],
                             "--val", synth_shards["val"], "--epochs", "3", "--workers", "2"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    epoch_line = re.compile(r"epoch \d: loss ([\d.]+) over 3 batches")
    losses = [float(m.group(1)) for m in map(epoch_line.fullmatch, lines[:-1])]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    top1 = re.fullmatch(r"val top-1 ([\d.]+) over 4 clips of 4 classes", lines[-1])
    assert top1 and 0 <= float(top1.group(1)) <= 1


def test_loader_batches_and_seeds(synth_shards) -> None:
    clip = ClipConfig(num_frames=16, mv_size=8, num_iframes=1, iframe_size=32)

    def first_epoch(seed: int) -> list[dict]:
        loader = clip_loader(synth_shards["train"], clip, batch_size=4, workers=0, seed=seed)
        loader.dataset.set_epoch(0)
        return list(loader)

    batches = first_epoch(0)
    assert len(batches) == synth_shards["num_train"] // 4
    b = batches[0]
    assert b["mv"].shape == (4, 16, 2, 8, 8) and b["mv"].dtype == torch.float32
    assert b["valid"].shape == (4, 16, 8, 8) and b["iframes"].shape == (4, 1, 3, 32, 32)
    assert b["label"].dtype == torch.int64 and len(b["key"]) == 4
    again, other = first_epoch(0), first_epoch(1)
    assert all(torch.equal(x["mv"], y["mv"]) and x["key"] == y["key"] for x, y in zip(batches, again))
    assert [x["key"] for x in batches] != [x["key"] for x in other]
    assert class_names(synth_shards["train"]) == class_names([], Path(synth_shards["shards"]) / "classes.json")


def test_eval_loader_reads_every_sample_once(synth_shards) -> None:
    loader = clip_loader(synth_shards["train"], ClipConfig(num_frames=16, mv_size=8, num_iframes=0, mode="center"),
                         batch_size=5, train=False, workers=2)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == synth_shards["num_train"]


def test_class_names_of_remote_shards_need_the_file() -> None:
    with pytest.raises(ValueError, match="remote shards; pass classes="):
        class_names("http://127.0.0.1:1/train-000000.tar")
