"""Distributed helpers: single-process no-ops, and a real 2-process torchrun on gloo/CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mvmae.train import distributed
from mvmae.train.distributed import (
    DistInfo, all_reduce_mean, all_reduce_sum, barrier, cleanup, init_distributed, unwrap_model, wrap_ddp)

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from mvmae.shards.sample import SampleError
    from mvmae.shards.reader import SkipCounter
    from mvmae.train.distributed import (all_reduce_mean, all_reduce_sum, barrier, cleanup,
                                         init_distributed, unwrap_model, wrap_ddp)
    from mvmae.train.trainer import skip_metrics

    out = sys.argv[1]
    info = init_distributed()
    assert info.world_size == 2 and info.device.type == "cpu", info
    mean = all_reduce_mean(torch.tensor([info.rank + 1.0, 10.0 * info.rank]))
    total = all_reduce_sum(torch.tensor([info.rank + 1, 10 * info.rank]))
    skips = SkipCounter()  # rank r skips r + 1 samples of its shards
    for _ in range(info.rank + 1):
        assert skips(SampleError("a damaged sample"))
    skipped = skip_metrics(skips)
    torch.manual_seed(100 + info.rank)  # different initial weights: DDP must broadcast rank 0's
    model = wrap_ddp(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                         torch.nn.Linear(8, 1)), info)
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # each rank its own data: gradients are averaged
        x = torch.randn(16, 4)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = any(not torch.equal(a, b) for a, b in zip(initial, model.parameters()))
    torch.save({"mean": mean, "total": total, "skipped": skipped, "moved": moved, "is_main": info.is_main,
                "params": unwrap_model(model).state_dict()}, f"{out}/rank{info.rank}.pt")
    barrier()
    cleanup()
""")


def test_single_process_is_a_no_op(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert not info.is_distributed
    tensor = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(tensor), tensor) and torch.equal(all_reduce_sum(tensor), tensor)
    barrier()
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model and unwrap_model(model) is model
    cleanup()


def test_dist_info_is_frozen():
    info = DistInfo(1, 2, 1, torch.device("cpu"), False)
    assert info.is_distributed
    with pytest.raises(AttributeError):
        info.rank = 0  # type: ignore[misc]


def test_launch_detection(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not distributed.launched_by_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.launched_by_torchrun()


@pytest.mark.slow
def test_torchrun_two_processes_stay_in_sync(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path)]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, state in enumerate(ranks):
        torch.testing.assert_close(state["mean"], torch.tensor([1.5, 5.0]))
        assert torch.equal(state["total"], torch.tensor([3, 10]))
        # An epoch's skip counts are every rank's, summed (1 + 2 skipped samples).
        assert state["skipped"] == {"num_samples_skipped": 3, "num_shards_skipped": 0, "num_shard_retries": 0}
        assert state["moved"] and state["is_main"] == (rank == 0)
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name


def test_fewer_shards_than_ranks_is_refused_before_any_collective(synth_shards):
    """One pass over 3 shards cannot feed 4 ranks (a rank without a shard would end every epoch
    at its first batch): refused with what to do, on every rank alike (no process group needed)."""
    from types import SimpleNamespace

    from mvmae.shards.clips import ClipConfig
    from mvmae.train.trainer import steps_per_epoch

    cfg = SimpleNamespace(train=[synth_shards["train"]], steps_per_epoch=0)
    info = DistInfo(3, 4, 0, torch.device("cpu"), False)
    with pytest.raises(ValueError, match=r"3 shard\(s\) in .* for 4 ranks: each rank needs one; .*--steps-per-epoch"):
        steps_per_epoch(cfg, ClipConfig(mode="train"), info)
    assert steps_per_epoch(SimpleNamespace(train=cfg.train, steps_per_epoch=5), ClipConfig(mode="train"), info) == 5
