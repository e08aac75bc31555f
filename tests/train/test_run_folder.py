"""A trainer's run folder (``mvmae.train.run_folder``) on every way a run can end before or without
training: whatever fails in set-up after the folder was locked (counting the steps, a checkpoint
from other shards or whose weights do not load, an unwritable config.yaml) releases the lock and
leaves the folder as it was; a trainer built but never run holds it until ``close()``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from mvmae.train import checkpoint as ckpt
from mvmae.train.config import load_config
from mvmae.train.pretrain import PretrainConfig, Pretrainer
from mvmae.train.resume import ResumeError
from mvmae.train.run_folder import lock_folder
from mvmae.train.writes import OutputWriteError

RUN = {"model_size": "micro", "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "batch_size": 4,
       "workers": 0, "epochs": 1, "warmup_epochs": 0, "masking": "random", "log_every": 1, "seed": 0}
TORN = b'{"step": 4, "epoch": 1, "lo'  # what a kill in the middle of a record leaves


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


def config(shards: dict, codebook: Path, out: Path, **changes) -> PretrainConfig:
    return load_config(PretrainConfig, None, {**RUN, "train": [shards["train"]], "codebook": str(codebook),
                                              "out": str(out), **changes})


@pytest.fixture(scope="module")
def finished(synth_shards, synth_codebook, tmp_path_factory) -> Path:
    """The folder of a finished 1-epoch pretraining run (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    Pretrainer(config(synth_shards, synth_codebook, out)).run()
    return out


def contents(out: Path) -> dict[str, bytes]:
    """The folder's files but the lock file (which holds the pid of the last run that locked it)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def fewer_batches_than_accum_steps(shards, codebook, out: Path, finished: Path) -> dict:
    return {"accum_steps": 4}  # 12 clips: 3 batches of 4


def other_steps_per_epoch(shards, codebook, out: Path, finished: Path) -> dict:
    shutil.copytree(finished, out)
    return {"resume": True, "train": [shards["train"].replace("000002}", "000001}")]}


def weights_that_do_not_load(shards, codebook, out: Path, finished: Path) -> dict:
    shutil.copytree(finished, out)
    state = ckpt.load_checkpoint(out / "last.pt")
    state[ckpt.MODEL].pop(next(iter(state[ckpt.MODEL])))
    ckpt.save_checkpoint(out / "last.pt", state)
    return {"resume": True}


def unwritable_config_yaml(shards, codebook, out: Path, finished: Path) -> dict:
    (out / "config.yaml").mkdir(parents=True)  # os.replace onto a folder fails (EISDIR)
    return {}


@pytest.mark.parametrize("fault,error,message,before_writes", [
    (fewer_batches_than_accum_steps, ValueError, "fewer than accum_steps=4", True),
    (other_steps_per_epoch, ResumeError, "the saved run had 3 steps per epoch, the shards now give 2", True),
    (weights_that_do_not_load, RuntimeError, "Missing key", True),
    (unwritable_config_yaml, OutputWriteError, "cannot write resolved config", False),
])
def test_a_set_up_failure_releases_the_folder(fault: Callable, error, message, before_writes,
                                              synth_shards, synth_codebook, finished, other_process_locks,
                                              tmp_path):
    """The folder is locked before set-up counts the steps of an epoch and loads the checkpoint;
    each failure there releases it (also while the failed trainer is still referenced, here by
    the exception's traceback). All but the failing write of config.yaml (the last step) come
    before the folder is tidied: a torn metrics record stays until a run that goes on drops it."""
    out = tmp_path / "run"
    changes = fault(synth_shards, synth_codebook, out, finished)
    if (out / "metrics.jsonl").exists():
        with open(out / "metrics.jsonl", "ab") as fh:
            fh.write(TORN)
    before = contents(out) if out.exists() else {}
    with pytest.raises(error, match=message) as info:
        Pretrainer(config(synth_shards, synth_codebook, out, **changes))
    assert info.traceback  # the half-built trainer is still reachable from here
    assert other_process_locks(out).returncode == 0
    lock_folder(out).close()  # not held by this process either
    if before_writes:
        assert contents(out) == before


def test_a_trainer_not_run_holds_the_folder_until_closed(synth_shards, synth_codebook, other_process_locks,
                                                          tmp_path):
    out = tmp_path / "run"
    trainer = Pretrainer(config(synth_shards, synth_codebook, out))
    refused = other_process_locks(out)
    assert refused.returncode == 1 and f"another run (pid {os.getpid()})" in refused.stderr
    with pytest.raises(ResumeError, match="a run of this process is writing there already"):
        Pretrainer(config(synth_shards, synth_codebook, out))
    trainer.close()
    assert other_process_locks(out).returncode == 0
    with pytest.raises(RuntimeError, match="this run has ended or never started"):
        trainer.run()
    trainer.close()  # idempotent


def test_a_finished_run_releases_the_folder(finished, other_process_locks):
    assert other_process_locks(finished).returncode == 0
    assert not list(finished.glob(".*tmp*"))
