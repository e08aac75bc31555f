"""Multi-node ``pretrain`` and ``train``: two torchrun launchers on loopback acting as two nodes
(``nodes.py``), each rank reading its own share of shards that do not divide evenly over
ranks x DataLoader workers (5 shards for 2 ranks x 2 workers in pretraining; 3 in fine-tuning,
so one worker of rank 1 idles): no epoch hangs, checkpoints and logs are written once, and validation over both ranks
equals one process evaluating the same checkpoint on the same shards.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mvmae.train import checkpoint as ckpt
from nodes import log_text, node_env, start_nodes, wait_nodes

pytestmark = pytest.mark.slow

TIMEOUT_S = 300
PRETRAIN = {"model_size": "micro", "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
            "masking": "mgm", "batch_size": 2, "workers": 2, "epochs": 2, "warmup_epochs": 1,
            "lr": 3e-4, "log_every": 1, "seed": 0}
TRAIN = {"model": {"inputs": "mv", "motion_size": "micro", "num_segments": 2, "dim": 32, "temporal_heads": 4},
         "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
         "epochs": 2, "phase1_epochs": 1, "unfreeze_blocks": 1, "batch_size": 2, "val_batch_size": 2,
         "workers": 2, "lr": 1e-3, "warmup_epochs": 1, "label_smoothing": 0.0, "flip_prob": 0.0,
         "crop_area": [0.8, 1.0], "seed": 0}


@pytest.fixture(scope="module")
def uneven_shards(synth_shards, tmp_path_factory) -> dict:
    """The synthetic videos again, in shards of 2: train = the first 5 shards (10 videos), val =
    2 shards (4 videos)."""
    from mvmae.job.job import JobConfig, run_job

    shards = tmp_path_factory.mktemp("uneven_shards")
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=synth_shards["dir"] / f"{split}.txt", out_dir=shards, split=split,
                                    shard_size=2))
        assert summary.num_failed == 0
    return {"train": str(shards / "train-{000000..000004}.tar"), "val": str(shards / "val-{000000..000001}.tar"),
            "num_val": 4, "shards": shards}


def _yaml(tmp_path: Path, name: str, values: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _records(out: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def _run_nodes(args: list[str], logs: Path) -> list[str]:
    codes = wait_nodes(start_nodes(args, logs), TIMEOUT_S)
    texts = [log_text(logs, node) for node in range(2)]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    return texts


def _written_once(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir() if p.is_file() and p.name != ".lock") == [
        "best.pt", "config.yaml", "epoch_0000.pt", "epoch_0001.pt", "last.pt", "metrics.jsonl"]


def test_two_nodes_pretrain_over_uneven_shards(uneven_shards, synth_codebook, tmp_path):
    """5 shards for 2 ranks x 2 workers (3 + 2 per rank; 2 + 1 and 1 + 1 per worker): each epoch
    ends when the rank with the fewest batches runs out (``in_lockstep``), every rank takes the
    same number of optimizer steps, and both nodes finish."""
    out = tmp_path / "run"
    config = _yaml(tmp_path, "pretrain", PRETRAIN)
    texts = _run_nodes(["pretrain", "--config", config, "--train", uneven_shards["train"],
                        "--codebook", str(synth_codebook), "--out", str(out)], tmp_path / "logs")
    assert [t.count("pretraining done") for t in texts] == [1, 1]
    _written_once(out)
    state = ckpt.load_checkpoint(out / "last.pt")
    assert state[ckpt.EPOCH] == 1 and state[ckpt.STEP] == 2 * state[ckpt.STEPS_PER_EPOCH] > 0
    epochs = _records(out, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1] and all(math.isfinite(r["loss"]) for r in epochs)


def test_two_nodes_train_validate_like_one_process(uneven_shards, synth_shards, tmp_path):
    """Fine-tuning on two nodes over 3 train shards, fewer than 2 ranks x 2 workers (one worker of
    rank 1 idles): val metrics (each rank scores its own val shard, gathered) equal ``mvmae eval``
    of the last checkpoint in one process over the same val shards."""
    out = tmp_path / "run"
    texts = _run_nodes(["train", "--config", _yaml(tmp_path, "train", TRAIN), "--train", synth_shards["train"],
                        "--val", uneven_shards["val"], "--out", str(out)], tmp_path / "logs")
    assert [t.count("training done") for t in texts] == [1, 1]
    _written_once(out)
    last_val = _records(out, "val")[-1]
    assert last_val["epoch"] == 1 and last_val["num_samples"] == uneven_shards["num_val"]
    report = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "mvmae.cli", "eval", "--ckpt", str(out / "last.pt"),
                             "--data", uneven_shards["val"], "--out", str(report), "--workers", "0"],
                            env=node_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((report / "metrics.json").read_text())
    for name in ("top1", "top5", "macro_f1", "macro_precision", "macro_recall"):
        assert last_val[name] == pytest.approx(single[name], abs=1e-6), name
