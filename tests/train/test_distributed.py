"""Distributed helpers: single-process no-ops, and a real 2-process torchrun on gloo/CPU (the
shared ``two_ranks`` launch of tests/conftest.py, ``tests/two_ranks.py``)."""

from __future__ import annotations

import pytest
import torch

from mvmae.train import distributed
from mvmae.train.distributed import (
    DistInfo, all_reduce_mean, all_reduce_sum, barrier, cleanup, init_distributed, unwrap_model, wrap_ddp)


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
def test_torchrun_two_processes_stay_in_sync(two_ranks):
    """``two_ranks.helpers`` on both ranks of a real 2-process torchrun (tests/conftest.py)."""
    ranks = [torch.load(two_ranks / f"rank{r}.pt") for r in range(2)]
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
