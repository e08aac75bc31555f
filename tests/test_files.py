"""mvmae.files: the one write error, atomic writes under one temporary-name scheme, the stale
temporaries a run may remove, and file locks."""

from __future__ import annotations

import errno
import os
import pickle
import re
import resource
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mvmae.extract.export import save_export
from mvmae.extract.video import VideoFields
from mvmae.files import (FileLock, LockHeld, WriteError, atomic_open, atomic_write_bytes,
                         stale_temporaries, temporary_path)
from mvmae.shards.writer import ShardFile
from mvmae.train.checkpoint import _atomic_copy, save_checkpoint
from mvmae.train.writes import OutputWriteError, writing

HOST = socket.gethostname()
# .<name>.tmp-<host>-<pid>-<tag>: the only temporary name mvmae writes
TEMPORARY = re.compile(rf"\.(?P<target>.+)\.tmp-{re.escape(HOST)}-{os.getpid()}-[0-9a-f]{{8}}")


@pytest.mark.parametrize("number, what, then, expected", [
    (errno.ENOSPC, "", "", "cannot write /o/a.tar: No space left on device (ENOSPC)"),
    (errno.EFBIG, "checkpoint", "rerun with --resume", "cannot write checkpoint /o/a.tar: File too "
     "large (EFBIG); raise the file-size limit (ulimit -f), then rerun with --resume"),
    (errno.EROFS, "", "run the same command again", "cannot write /o/a.tar: Read-only file system "
     "(EROFS); make the folder writable, then run the same command again"),
    (errno.ENOENT, "report", "retry", "cannot write report /o/a.tar: No such file or directory "
     "(ENOENT); fix the cause, then retry"),
    (4242, "", "", "cannot write /o/a.tar: odd (errno 4242)"),  # a number without a name
    (None, "", "", "cannot write /o/a.tar: odd"),
])
def test_write_error_names_the_file_the_reason_and_what_to_do(number, what, then, expected) -> None:
    cause = OSError(number, os.strerror(number) if number in errno.errorcode else "odd")
    exc = WriteError("/o/a.tar", cause, what, then)
    assert str(exc) == expected
    assert isinstance(exc, OSError) and (exc.errno, exc.filename, exc.path) == (number, "/o/a.tar", "/o/a.tar")


def test_an_error_without_an_errno_gives_its_message() -> None:
    assert str(WriteError("/o/a", OSError("the disk went away"))) == "cannot write /o/a: the disk went away"


@pytest.mark.parametrize("exc", [
    WriteError("/o/a.tar", OSError(errno.ENOSPC, "No space left on device"), "shard", "go on"),
    OutputWriteError("/o/last.pt", OSError(errno.EFBIG, "File too large"), "checkpoint"),
])
def test_write_error_crosses_a_process_boundary(exc) -> None:
    """Pickled (a multiprocessing pipe, a queue) or sent as (path, errno, reason), as extraction
    workers report theirs: the same error on the other side, the errno named once."""
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc) and str(again) == str(exc) and again.errno == exc.errno
    rebuilt = WriteError(exc.path, OSError(exc.errno, exc.reason))
    assert rebuilt.reason == exc.reason and str(rebuilt) == str(WriteError(exc.path, exc))


def test_writing_gives_a_write_error_the_run_hint() -> None:
    """A WriteError of a write inside ``writing`` comes out named as the run's file, with the hint."""
    with pytest.raises(OutputWriteError) as info:
        with writing("/run/config.yaml", "configuration"):
            raise WriteError("/run/config.yaml", OSError(errno.ENOSPC, "No space left on device"))
    assert str(info.value) == ("cannot write configuration /run/config.yaml: No space left on device "
                               "(ENOSPC); free space, then rerun with --resume")


def _limit_file_size(num_bytes: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
    return lambda: (resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard)),
                    signal.signal(signal.SIGXFSZ, handler))


def test_atomic_open_failures_are_write_errors_and_leave_nothing(tmp_path) -> None:
    target = tmp_path / "a.json"
    with pytest.raises(WriteError) as info:  # the folder is missing: the temporary file cannot be made
        with atomic_open(tmp_path / "missing" / "a.json"):
            pass
    assert info.value.errno == errno.ENOENT and info.value.path == str(tmp_path / "missing" / "a.json")
    target.write_text("old")
    restore = _limit_file_size(1024)
    try:
        with pytest.raises(WriteError) as info:  # a write inside the block fails
            with atomic_open(target, "wb") as fh:
                fh.write(b"x" * 4096)
    finally:
        restore()
    assert str(info.value) == f"cannot write {target}: File too large (EFBIG)"
    with pytest.raises(KeyError):  # not an I/O error: passed on as it is
        with atomic_open(target) as fh:
            fh.write("partial")
            raise KeyError("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and target.read_text() == "old"


def test_a_failure_of_a_nested_write_names_its_own_file(tmp_path) -> None:
    with pytest.raises(WriteError) as info:
        with atomic_open(tmp_path / "outer.csv") as outer:
            outer.write("a,b\n")
            with atomic_open(tmp_path / "missing" / "inner.jsonl"):
                pass
    assert info.value.path == str(tmp_path / "missing" / "inner.jsonl")
    assert list(tmp_path.iterdir()) == []


def _fields() -> VideoFields:
    return VideoFields(mv=np.zeros((2, 2, 3, 4), np.float32), valid=np.ones((2, 3, 4), bool),
                       frame_types=np.frombuffer(b"IP", np.uint8), iframes=np.zeros((1, 8, 8, 3), np.uint8),
                       iframe_index=np.zeros(1, np.int64), grid=16, fps=25.0, size=(48, 64), meta={})


def test_every_atomic_write_uses_the_one_temporary_name(tmp_path, monkeypatch) -> None:
    """atomic_open, atomic_write_bytes, shards, exports, checkpoints and their copies (a hard link,
    or bytes across filesystems): each renames a '.<name>.tmp-<host>-<pid>-<tag>' onto its name."""
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((Path(src), Path(dst))),
                                                         real_replace(src, dst))[1])
    with atomic_open(tmp_path / "a.csv") as fh:
        fh.write("x\n")
    atomic_write_bytes(tmp_path / "b.json", b"{}")
    with ShardFile(tmp_path / "c.tar") as shard:
        shard.write({"__key__": "k", "cls": b"1"})
        shard.commit()
    save_export(tmp_path / "d.npz", _fields())
    save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(2)})
    _atomic_copy(tmp_path / "last.pt", tmp_path / "best.pt")
    names = ["a.csv", "b.json", "c.tar", "d.npz", "last.pt", "best.pt"]
    other_fs = Path("/dev/shm")
    if other_fs.is_dir() and os.stat(other_fs).st_dev != os.stat(tmp_path).st_dev:
        src = other_fs / f"mvmae-test-{os.getpid()}.pt"
        shutil.copy(tmp_path / "last.pt", src)
        try:
            _atomic_copy(src, tmp_path / "epoch_0001.pt")  # os.link fails (EXDEV): bytes copied
        finally:
            src.unlink()
        names.append("epoch_0001.pt")
    assert [dst.name for _, dst in renamed] == names
    for src, dst in renamed:
        match = TEMPORARY.fullmatch(src.name)
        assert match and match["target"] == dst.name and src.parent == dst.parent, src
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert temporary_path(tmp_path / "a") != temporary_path(tmp_path / "a")  # two writes never meet


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_those_nobody_can_be_writing(tmp_path) -> None:
    """A dead process of this machine left it; or the caller claims its name (it holds the lock
    over it; the names of mvmae 0.1.0 too). Another machine's, or a live process's, stay."""
    dead, live = _dead_pid(), os.getpid()
    files = {
        "dead": f".classes.json.tmp-{HOST}-{dead}-0123abcd",
        "live": f".classes.json.tmp-{HOST}-{live}-0123abcd",
        "elsewhere": f".classes.json.tmp-node-{HOST}-{dead}-0123abcd",  # a host whose name ends like ours
        "claimed_elsewhere": ".train-000001.tar.tmp-other-7-0123abcd",
        "old_shard": ".train-000001.json.tmp-77",
        "old_copy": ".epoch_0002.pt.77.tmp",
        "old_mkstemp": ".last.pt.k2j4abcd.tmp",
    }
    for name in [*files.values(), ".notes", "train-000001.tar", "last.pt"]:
        (tmp_path / name).write_bytes(b"x")

    def stale(**kwargs) -> set[str]:
        found = {p.name for p in stale_temporaries(tmp_path, **kwargs)}
        return {key for key, name in files.items() if name in found}

    assert stale() == {"dead"}
    assert stale(claimed={"train-000001.tar", "train-000001.json"}.__contains__) == \
        {"dead", "claimed_elsewhere", "old_shard"}
    assert stale(claimed=lambda name: True) == set(files)  # the training folder, locked
    assert stale(pid=live) == {"live"} and stale(pid=dead) == {"dead"}  # a worker that exited
    assert stale_temporaries(tmp_path / "missing") == []


def test_a_file_lock_is_held_once(tmp_path) -> None:
    path = tmp_path / ".job.lock"
    with FileLock(path):
        assert path.read_text() == f"pid {os.getpid()} on {HOST}\n"
        with pytest.raises(LockHeld) as info:
            FileLock(path)
        assert info.value.holder == f"pid {os.getpid()} on {HOST}"
    assert not path.exists()  # gone with its release
    path.write_text("pid 1 on a killed run\n")  # left by a holder killed -9: no lock any more
    with FileLock(path, wait=True):
        assert path.read_text() == f"pid {os.getpid()} on {HOST}\n"
    with pytest.raises(WriteError) as info:
        FileLock(tmp_path / "missing" / ".job.lock")
    assert info.value.errno == errno.ENOENT
