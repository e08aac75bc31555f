"""Atomic checkpoints, last/best/epoch rotation, version checks, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mvmae.train import checkpoint as ckpt
from mvmae.train.checkpoint import (
    CHECKPOINT_VERSION, CheckpointError, CheckpointManager, capture_rng_state, load_checkpoint,
    restore_rng_state, save_checkpoint)


def _state(value: float = 1.0) -> dict:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return {ckpt.MODEL: model.state_dict(), ckpt.OPTIMIZER: optimizer.state_dict(),
            ckpt.STEP: 7, ckpt.PHASE: "warmup", ckpt.CONFIG: {"lr": 1e-3, "grid": [8, 14, 14]},
            ckpt.TRAINABLE: ["head.weight"], ckpt.EXTRA: {"note": "x"}}


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_state_keys_are_distinct_strings():
    keys = [ckpt.MODEL, ckpt.OPTIMIZER, ckpt.SCHEDULER, ckpt.SCALER, ckpt.EPOCH, ckpt.STEP,
            ckpt.BEST_METRIC, ckpt.RNG, ckpt.CONFIG, ckpt.PHASE, ckpt.TRAINABLE, ckpt.VERSION,
            ckpt.EXTRA]
    assert len(set(keys)) == len(keys) and all(isinstance(k, str) for k in keys)


def test_save_load_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "c.pt", _state(0.5))
    state = load_checkpoint(path)
    assert state[ckpt.VERSION] == CHECKPOINT_VERSION and state[ckpt.STEP] == 7
    assert torch.equal(state[ckpt.MODEL]["weight"], torch.full((2, 3), 0.5))
    assert state[ckpt.CONFIG] == {"lr": 1e-3, "grid": [8, 14, 14]}
    assert _leftovers(tmp_path / "sub") == []


def test_failed_save_keeps_previous_file_and_no_temp(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state(1.0))
    before = path.read_bytes()
    bad = {**_state(2.0), ckpt.EXTRA: lambda: None}  # cannot be pickled: fails mid-write
    with pytest.raises(Exception):
        save_checkpoint(path, bad)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    assert torch.equal(load_checkpoint(path)[ckpt.MODEL]["weight"], torch.ones(2, 3))


def test_failed_replace_cleans_up(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _state(1.0))

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        save_checkpoint(path, _state(3.0))
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)[ckpt.MODEL]["weight"], torch.ones(2, 3))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(corrupt, _state())
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt.pt: cannot read checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not an mvmae checkpoint"):
        load_checkpoint(foreign)


def test_unknown_version_is_rejected(tmp_path, monkeypatch):
    path = tmp_path / "future.pt"
    monkeypatch.setattr(ckpt, "CHECKPOINT_VERSION", CHECKPOINT_VERSION + 1)
    save_checkpoint(path, _state())
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=rf"future.pt: checkpoint version {CHECKPOINT_VERSION + 1}"):
        load_checkpoint(path)


def test_manager_keeps_last_n_epochs(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last_n=2)
    for epoch in range(5):
        written = manager.save(_state(float(epoch)), epoch)
        assert set(written) == {"last", "epoch"}
    assert [p.name for p in manager.epoch_files()] == ["epoch_0003.pt", "epoch_0004.pt"]
    last = load_checkpoint(tmp_path / "last.pt")
    assert last[ckpt.EPOCH] == 4 and last[ckpt.MODEL]["weight"][0, 0] == 4.0
    assert load_checkpoint(tmp_path / "epoch_0003.pt")[ckpt.MODEL]["weight"][0, 0] == 3.0
    assert _leftovers(tmp_path) == [] and not (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("mode,values,best_epoch", [("max", [0.2, 0.5, 0.4, float("nan")], 1),
                                                    ("min", [0.9, 0.7, 0.8, 0.75], 1)])
def test_manager_tracks_best(tmp_path, mode, values, best_epoch):
    manager = CheckpointManager(tmp_path, keep_last_n=0, best_metric="score", mode=mode)
    for epoch, value in enumerate(values):
        written = manager.save(_state(float(epoch)), epoch, {"score": value, "loss": 1.0})
        assert ("best" in written) == (epoch == best_epoch or epoch == 0)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best[ckpt.EPOCH] == best_epoch and best[ckpt.MODEL]["weight"][0, 0] == best_epoch
    assert best[ckpt.BEST_METRIC] == {"name": "score", "mode": mode,
                                      "value": values[best_epoch], "epoch": best_epoch}
    assert manager.epoch_files() == []


def test_manager_resumes_best_and_rotation(tmp_path):
    first = CheckpointManager(tmp_path, keep_last_n=2)
    for epoch in range(3):
        first.save(_state(), epoch, {"macro_f1": [0.3, 0.6, 0.5][epoch]})
    resumed = CheckpointManager(tmp_path, keep_last_n=2)
    resumed.restore(load_checkpoint(tmp_path / "last.pt"))
    assert resumed.best_value == 0.6 and resumed.best_epoch == 1
    assert "best" not in resumed.save(_state(), 3, {"macro_f1": 0.55})
    assert [p.name for p in resumed.epoch_files()] == ["epoch_0002.pt", "epoch_0003.pt"]
    with pytest.raises(KeyError, match="macro_f1"):
        resumed.save(_state(), 4, {"accuracy": 0.9})


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {ckpt.RNG: capture_rng_state()})

    def draws():
        return (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())

    expected = draws()
    draws()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")[ckpt.RNG])
    assert draws() == expected
