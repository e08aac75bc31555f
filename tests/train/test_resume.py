"""Starting and resuming a run in its folder (``mvmae.train.resume``, ``mvmae.train.run_folder``)
and the write errors that name the file (``mvmae.train.writes``): config and input checks, the
folder lock, leftovers of a killed run, and a real failed write (a file-size limit on this
process makes it fail with EFBIG)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from mvmae.shards.reader import ReadConfig
from mvmae.train import checkpoint as ckpt
from mvmae.train.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from mvmae.train.config import config_to_dict
from mvmae.train.resume import (
    ResumeError, check_resume_config, check_resume_inputs, load_resume_state, prepare_folder,
    remove_stale_temporaries)
from mvmae.train.run_folder import lock_folder
from mvmae.train.writes import OutputWriteError, os_error_in, writing

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Model:
    dim: int = 32
    depth: int = 2


@dataclass
class Run:
    """A run config as the trainers' are: nested config dataclasses, a free-form dict of options."""

    lr: float = 3e-4
    epochs: int = 4
    workers: int = 2
    steps_per_epoch: int = 0
    out: str = "runs/a"
    resume: bool = False
    train: list[str] = field(default_factory=lambda: ["a-{0..3}.tar"])
    model: Model = field(default_factory=Model)
    masking_options: dict = field(default_factory=dict)
    read: ReadConfig = field(default_factory=ReadConfig)
    loader_timeout_s: float = 0.0


CONFIG = Run()


def _state(epoch: int, config: Run | dict = CONFIG) -> dict:
    saved = config_to_dict(config) if isinstance(config, Run) else config
    return {ckpt.EPOCH: epoch, ckpt.CONFIG: saved, ckpt.MODEL: {"w": torch.full((2,), float(epoch))}}


@contextlib.contextmanager
def file_size_limit(num_bytes: int):
    """Writes of this process past ``num_bytes`` fail with EFBIG (SIGXFSZ ignored meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_same_config_and_free_fields_resume(tmp_path):
    saved = dataclasses.replace(CONFIG, read=ReadConfig(stall_s=60.0, retries=3))
    moved = dataclasses.replace(saved, out="elsewhere/a", resume=True, loader_timeout_s=600.0,
                                read=ReadConfig(stall_s=300.0, retries=5))
    check_resume_config(_state(1, saved), moved, tmp_path / "last.pt")


@pytest.mark.parametrize("change,expected", [
    ({"lr": 1e-3}, "lr 0.0003 -> 0.001"),
    ({"model": Model(dim=64)}, "model.dim 32 -> 64"),
    ({"epochs": 6}, "epochs 4 -> 6"),  # the saved run (epoch 1 of 4) is not finished
    ({"masking_options": {"mode": "inside"}}, "masking_options {} -> {'mode': 'inside'}"),
    ({"read": ReadConfig(check_crc=False)}, "read.check_crc True -> False"),
    ({"workers": 0}, "workers 2 -> 0"),  # one pass over the shards: each worker reads its share
])
def test_changed_config_is_refused(tmp_path, change, expected):
    refused = r"last.pt: cannot resume with a different configuration \("
    with pytest.raises(ResumeError, match=refused) as info:
        check_resume_config(_state(1), dataclasses.replace(CONFIG, **change), tmp_path / "last.pt")
    assert expected in str(info.value) and "--out" in str(info.value)


def test_options_dict_is_compared_whole(tmp_path):
    """A free-form dict of options is one value: options added, removed or changed are refused
    (a key on one side only is not 'another mvmae version's field')."""
    inside = dataclasses.replace(CONFIG, masking_options={"mode": "inside", "ratio": 0.75})
    for saved, now in ((inside, CONFIG), (inside, dataclasses.replace(inside, masking_options={"mode": "inside"}))):
        with pytest.raises(ResumeError, match=r"masking_options \{'mode': 'inside', 'ratio': 0.75\} -> "):
            check_resume_config(_state(1, saved), now, tmp_path / "last.pt")
    check_resume_config(_state(1, inside), dataclasses.replace(inside), tmp_path / "last.pt")


def test_workers_may_change_only_where_shards_are_resampled(tmp_path):
    """With ``steps_per_epoch`` the shards are drawn with replacement and an epoch has that many
    steps whatever the workers; over one pass each worker reads its own share (the message
    says so)."""
    resampled = dataclasses.replace(CONFIG, steps_per_epoch=5)
    check_resume_config(_state(1, resampled), dataclasses.replace(resampled, workers=8), tmp_path / "last.pt")
    with pytest.raises(ResumeError, match="workers: each DataLoader worker reads its own share of the shards"):
        check_resume_config(_state(1), dataclasses.replace(CONFIG, workers=8), tmp_path / "last.pt")


def test_a_finished_run_may_be_extended_and_inputs_moved(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mvmae.train.resume"):
        check_resume_config(_state(3), dataclasses.replace(CONFIG, epochs=6, train=["b-{0..3}.tar"]),
                            tmp_path / "last.pt")
    assert "extending a finished 4-epoch run to 6 epochs" in caplog.text
    assert "resuming with train ['b-{0..3}.tar'] instead of ['a-{0..3}.tar']" in caplog.text


def test_a_finished_run_is_not_shrunk(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mvmae.train.resume"), pytest.raises(
            ResumeError, match=r"epochs 4 -> 2"):
        check_resume_config(_state(3), dataclasses.replace(CONFIG, epochs=2), tmp_path / "last.pt")
    assert "extending" not in caplog.text


def test_other_inputs_are_refused_by_content(tmp_path):
    """The class list (or codebook digest) a run trained with is recorded in its checkpoint:
    other content is refused, the same content resumes; an older checkpoint without the record
    is not compared."""
    state = {**_state(1), ckpt.EXTRA: {"kind": "classifier", "classes": ["left", "right"]}}
    check_resume_inputs(state, {"classes": ["left", "right"], "codebook_sha256": "ab"}, tmp_path / "last.pt")
    with pytest.raises(ResumeError) as info:
        check_resume_inputs(state, {"classes": ["left", "up"]}, tmp_path / "last.pt")
    assert str(info.value) == (f"{tmp_path / 'last.pt'}: cannot resume with other inputs (classes ['left', "
                               f"'right'] -> ['left', 'up']): the saved run was trained with those; start a "
                               f"new run in another --out")


def test_resume_state_without_and_with_a_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    assert load_resume_state(manager, resume=False, current=CONFIG) is None
    assert load_resume_state(manager, resume=True, current=CONFIG) is None  # nothing saved yet
    manager.save(_state(0), 0)
    assert load_resume_state(manager, resume=True, current=CONFIG)[ckpt.EPOCH] == 0
    with pytest.raises(ResumeError, match="an earlier run's checkpoint is there; pass --resume"):
        load_resume_state(manager, resume=False, current=CONFIG)


def test_a_second_writer_is_refused_until_the_first_is_gone(other_process_locks, tmp_path):
    """Another process may not lock a locked folder, nor a second run in this process (a trainer
    built again in a notebook while the first still holds it: the refusal leaves the lock held);
    closing the lock (what a kill does too) frees it."""
    out = tmp_path / "run"
    first = lock_folder(out)
    refused = other_process_locks(out)
    assert refused.returncode == 1
    assert f"ResumeError: {out}: another run (pid {os.getpid()}) is writing there" in refused.stderr
    with pytest.raises(ResumeError, match=f"{out}: a run of this process is writing there already"):
        lock_folder(out)
    assert other_process_locks(out).returncode == 1  # still held
    first.close()
    assert other_process_locks(out).returncode == 0
    lock_folder(out).close()


def test_a_forked_child_does_not_hold_the_lock(other_process_locks, tmp_path):
    """A run's DataLoader workers are forked with the lock file open. A run killed while one of
    them lingers leaves the folder free: the lock was the killed process's own."""
    out = tmp_path / "run"
    script = ("import os, sys, time; from pathlib import Path; from mvmae.train.run_folder import lock_folder\n"
              "lock = lock_folder(Path(sys.argv[1]))\n"
              "child = os.fork()\n"
              "if child == 0:\n    time.sleep(300)\n    os._exit(0)\n"
              "print(child, flush=True)\n"
              "time.sleep(300)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(holder.stdout.readline())
        refused = other_process_locks(out)
        assert refused.returncode == 1 and f"another run (pid {holder.pid})" in refused.stderr
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked child still runs, with the lock file open
        assert other_process_locks(out).returncode == 0, other_process_locks(out).stderr
    finally:
        holder.kill()
        holder.wait()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_leftovers_of_a_killed_run_are_tidied(tmp_path):
    """A kill after last.pt was replaced but before its copies: epoch_0002.pt missing, best.pt
    one improvement behind; temporaries of three kinds of write; records of epoch 3 and a torn
    line. prepare_folder completes the copies, removes the temporaries, cuts the records."""
    out = tmp_path / "run"
    manager = CheckpointManager(out, keep_last_n=2, best_metric="loss", mode="min")
    for epoch, loss in ((0, 3.0), (1, 2.0)):
        manager.save(_state(epoch), epoch, {"loss": loss})
    manager.best_value, manager.best_epoch = 1.0, 2  # what save() records before its copies
    save_checkpoint(manager.last_path, {**_state(2), ckpt.BEST_METRIC: manager._best_entry()})
    temporaries = [".last.pt.k2j4.tmp", ".epoch_0002.pt.77.tmp", ".config.yaml.tmp-77"]
    for name in (*temporaries, ".notes"):
        (out / name).write_bytes(b"partial")
    lines = [b'{"step": 3, "epoch": 2, "loss": 1.0}', b'{"step": 4, "epoch": 3, "loss": 0.9}',
             b'{"step": 5, "ep']
    (out / "metrics.jsonl").write_bytes(b"\n".join(lines))

    state = load_checkpoint(manager.last_path)
    fresh = CheckpointManager(out, keep_last_n=2, best_metric="loss", mode="min")
    prepare_folder(fresh, state)
    assert sorted(p.name for p in out.iterdir()) == [".notes", "best.pt", "epoch_0001.pt", "epoch_0002.pt",
                                                    "last.pt", "metrics.jsonl"]
    for name in ("best.pt", "epoch_0002.pt"):
        assert load_checkpoint(out / name)[ckpt.EPOCH] == 2
    assert (out / "metrics.jsonl").read_bytes() == lines[0] + b"\n"
    assert remove_stale_temporaries(out) == []


def test_a_fresh_start_drops_every_record(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "loss": 3.0}\n')
    prepare_folder(CheckpointManager(out), None)
    assert (out / "metrics.jsonl").read_text() == ""


def test_full_file_size_fails_with_the_path_and_the_reason(tmp_path):
    """torch.save past the limit raises its zip writer's RuntimeError; the error names the
    checkpoint, EFBIG and what to do, and leaves the old checkpoint and no temporary file."""
    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(4)})
    with file_size_limit(64 * 1024), pytest.raises(OutputWriteError) as info:
        save_checkpoint(path, {"w": torch.zeros(100_000)})
    assert str(info.value) == (f"cannot write checkpoint {path}: File too large (EFBIG); raise the file-size "
                               f"limit (ulimit -f), then rerun with --resume")
    assert info.value.errno == errno.EFBIG and isinstance(info.value.__cause__, RuntimeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(4))


def test_writing_passes_other_errors_and_finds_chained_os_errors(tmp_path):
    with pytest.raises(KeyError):
        with writing(tmp_path / "x", "file"):
            raise KeyError("not an I/O error")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("unexpected pos 768 vs 662") from inner
    except RuntimeError as outer:
        assert os_error_in(outer).errno == errno.ENOSPC
    with pytest.raises(OutputWriteError, match=r"cannot write metrics .*m.jsonl: No space left on device "
                                               r"\(ENOSPC\); free space, then rerun with --resume"):
        with writing(tmp_path / "m.jsonl", "metrics"):
            raise RuntimeError("zip writer") from OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_metrics_write_names_the_file_and_the_resume_drops_its_torn_line(tmp_path):
    from mvmae.train.logs import METRICS_FILE, MetricLogger, truncate_records

    path = tmp_path / METRICS_FILE
    logger = MetricLogger(tmp_path, use_tensorboard=False, is_main=True)
    logger.log({"loss": 1.0}, step=1, epoch=0)
    first = path.read_bytes()
    with file_size_limit(path.stat().st_size + 20):
        with pytest.raises(OutputWriteError) as info:
            logger.log({"loss": 0.5, "lr": 1e-4}, step=2, epoch=1)
        assert str(info.value).startswith(f"cannot write metrics {path}: File too large (EFBIG)")
        with pytest.raises(OutputWriteError):
            logger.close()  # the rest of the record still does not fit
    assert path.read_bytes().count(b"\n") == 1 and not path.read_bytes().endswith(b"\n")
    assert truncate_records(path, last_epoch=0) == 1
    assert path.read_bytes() == first  # the complete record, byte for byte, and nothing else


def test_fields_of_another_version_are_not_compared(tmp_path):
    """A checkpoint saved before a field existed (or after one was removed), at the top level or
    in a nested config, still resumes."""
    older = config_to_dict(CONFIG)
    del older["epochs"], older["model"]["depth"]
    older["removed_field"] = {"timeout_s": 30}
    check_resume_config(_state(1, older), CONFIG, tmp_path / "last.pt")
