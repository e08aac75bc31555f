"""A full disk and an output folder that stops being writable, for ``mvmae pretrain`` and
``mvmae train``: the run stops with one clear error line (the file, the reason, how to go on)
and a non-zero exit, no partial checkpoint under a final name and no temporary file left; once
the folder is fixed, ``--resume`` completes and ends bit-identical to the uninterrupted run.

The faults are real, made by the strongest means the machine allows (``DiskFault``), and the
test runs with whichever it gets (never skipped): with mount rights, a tmpfs shrunk to what it
holds (ENOSPC) and a read-only bind mount uncovered under the running process (EROFS); else, when
permissions stop this process, ``chmod 0o555`` (EACCES); otherwise (root that may not mount, whom
permissions do not stop) a file-size limit on the process (``RLIMIT_FSIZE``: EFBIG).
``MVMAE_TEST_NO_MOUNT=1`` skips the mounts, to try the fallbacks where mounts work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_faults import (
    KINDS, TEMPORARY, Child, FolderWatch, assert_same_run, drive, error_line, job, ok,
    run, saved_epoch)

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

TMPFS_SIZE = "64m"
HEADROOM = 128 * 1024  # bytes a shrunk tmpfs keeps free: metrics records fit, a checkpoint does not
FILE_SIZE_LIMIT = 64 * 1024  # bytes: above metrics.jsonl and the event file, below a checkpoint
_PROBED: dict[str, bool] = {}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def can_mount(probe_dir: Path) -> bool:
    """Whether this process may mount a tmpfs (root in a namespace that allows it); probed once."""
    if "mount" not in _PROBED:
        _PROBED["mount"] = False
        if os.environ.get("MVMAE_TEST_NO_MOUNT") != "1":
            probe_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe_dir))
                subprocess.run(["umount", str(probe_dir)], check=True, timeout=30)
                _PROBED["mount"] = True
    return _PROBED["mount"]


def permissions_stop_me(probe_dir: Path) -> bool:
    """Whether a folder's ``chmod 0o555`` keeps this process from creating files in it (not for
    root with CAP_DAC_OVERRIDE); probed once."""
    if "chmod" not in _PROBED:
        probe_dir.mkdir(parents=True, exist_ok=True)
        probe_dir.chmod(0o555)
        try:
            (probe_dir / "file").touch()
            _PROBED["chmod"] = False
        except PermissionError:
            _PROBED["chmod"] = True
        finally:
            probe_dir.chmod(0o755)
    return _PROBED["chmod"]


class DiskFault:
    """Breaks the output folder ``out`` of a run: ``kind`` 'full' (no space left) or 'readonly'
    (no longer writable). ``mechanism`` and ``errno_name`` say how (see the module docstring).
    ``break_now(pid)`` breaks it under the running process ``pid`` (stopped meanwhile by the
    caller), ``repair()`` undoes it; leaving the ``with`` block unmounts everything."""

    def __init__(self, kind: str, root: Path) -> None:
        mount = can_mount(root / "probe")
        if kind == "full":
            self.mechanism = "tmpfs" if mount else "rlimit"
        elif mount:
            self.mechanism = "bind-ro"
        else:
            self.mechanism = "chmod" if permissions_stop_me(root / "probe-chmod") else "rlimit"
        self.errno_name = {"tmpfs": "ENOSPC", "bind-ro": "EROFS", "chmod": "EACCES",
                           "rlimit": "EFBIG"}[self.mechanism]
        self.store, self.base = root / "store", root / "mnt"
        self.out = self.base / "run"
        log.info(f"{kind} output folder by {self.mechanism} ({self.errno_name})")

    @property
    def folder_level(self) -> bool:
        """Whether the fault is the folder's (any process sees it), not one process's limit."""
        return self.mechanism != "rlimit"

    def __enter__(self) -> "DiskFault":
        self.base.mkdir(parents=True)
        if self.mechanism == "tmpfs":
            _mount("-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(self.base))
        elif self.mechanism == "bind-ro":  # a read-only view of the store, a writable one on top
            self.store.mkdir()
            _mount("-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(self.store))
            _mount("--bind", str(self.store), str(self.base))
            _mount("-o", "remount,bind,ro", str(self.base))
            _mount("--bind", str(self.store), str(self.base))
        return self

    def break_now(self, pid: int | None) -> None:
        """Break the folder (``pid``: under that running process; None: before a start)."""
        if self.mechanism == "tmpfs":
            st = os.statvfs(self.base)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            _mount("-o", f"remount,size={used + HEADROOM}", str(self.base))
        elif self.mechanism == "bind-ro":  # uncover the read-only view; open files stay usable
            subprocess.run(["umount", "-l", str(self.base)], check=True, timeout=30)
        elif self.mechanism == "chmod":
            for folder in (self.base, self.out):
                if folder.exists():
                    folder.chmod(0o555)
        else:
            assert pid is not None, "a file-size limit needs a process"
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    def repair(self) -> None:
        if self.mechanism == "tmpfs":
            _mount("-o", f"remount,size={TMPFS_SIZE}", str(self.base))
        elif self.mechanism == "bind-ro":
            _mount("--bind", str(self.store), str(self.base))
        elif self.mechanism == "chmod":
            for folder in (self.base, self.out):
                if folder.exists():
                    folder.chmod(0o755)
        # rlimit: the limit dies with its process

    def __exit__(self, *exc) -> None:
        if self.mechanism == "chmod":  # pytest must be able to delete it
            self.repair()
        for mount_point in (self.base, self.store):
            while os.path.ismount(mount_point):
                subprocess.run(["umount", "-l", str(mount_point)], check=True, timeout=30)


def break_after(fault: DiskFault, name: str = "epoch_0001.pt"):
    """A ``drive`` action: once ``name`` appears (two checkpoints are saved), stop the run's
    process group, break the folder under it, and let it go on."""
    done: list[bool] = []

    def act(child: Child, names, now) -> bool:
        if not done and name in names:
            os.killpg(child.proc.pid, signal.SIGSTOP)
            try:
                fault.break_now(child.proc.pid)
            finally:
                os.killpg(child.proc.pid, signal.SIGCONT)
            done.append(True)
        return False

    return act


def assert_failed_cleanly(outcome, watch: FolderWatch, path: Path, what: str, errno_name: str) -> None:
    """Exit 1 with the one-line error naming ``path`` and ``errno_name``; nothing partial left:
    every checkpoint under a final name loads, and no temporary file is there."""
    assert outcome.returncode == 1 and not outcome.killed, outcome.output[-3000:]
    line = error_line(outcome.output)
    assert line.startswith(f"error: cannot write {what} {path}: "), line
    assert f"({errno_name}); " in line and line.endswith("then rerun with --resume"), line
    watch.check()
    assert not [n for n in os.listdir(path.parent) if TEMPORARY.match(n)]


def fails_at_start(kind: str, data: dict, fault: DiskFault, tmp_path: Path, cli_runner) -> str:
    """Start ``kind`` into the broken folder; returns its error line. Folder faults: in this
    process (the run stops during set-up, before any file); a process limit: a child started
    under it (the run stops at its first checkpoint; its output reaches the log through a pipe)."""
    if fault.folder_level:
        from mvmae.cli import main

        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            result = cli_runner.invoke(main, job(kind, data, fault.out)[3:])
        finally:
            torch.use_deterministic_algorithms(deterministic)
        assert result.exit_code == 1, result.output
        return error_line(result.stderr)
    child = Child(job(kind, data, fault.out), tmp_path / "at-start.log", file_size_limit=FILE_SIZE_LIMIT)
    outcome = drive(child, FolderWatch(fault.out))
    assert outcome.returncode == 1, outcome.output[-3000:]
    return error_line(outcome.output)


@pytest.mark.parametrize("kind", KINDS)
def test_unwritable_output_folder(kind, fault_data, references, tmp_path, cli_runner):
    """Unwritable from the start: the run stops before training, naming the folder. Made
    unwritable after two checkpoints: the next save fails, naming last.pt. Writable again:
    ``--resume`` completes exactly like the reference."""
    with DiskFault("readonly", tmp_path) as fault:
        out = fault.out
        if fault.folder_level:
            fault.break_now(None)
        line = fails_at_start(kind, fault_data, fault, tmp_path, cli_runner)
        assert str(out) in line and f"({fault.errno_name}); " in line, line
        assert not list(fault.base.rglob("*.pt"))
        fault.repair()

        watch = FolderWatch(out)
        failed = run(job(kind, fault_data, out), out, tmp_path / "failed.log", watch,
                     act=break_after(fault))
        assert_failed_cleanly(failed, watch, out / "last.pt", "checkpoint", fault.errno_name)
        assert saved_epoch(out) >= 1
        fault.repair()
        ok(run(job(kind, fault_data, out, "--resume"), out, tmp_path / "resumed.log", watch))
        watch.check()
        assert_same_run(out, references(kind).summary)


@pytest.mark.parametrize("kind", KINDS)
def test_full_disk(kind, fault_data, references, tmp_path):
    """The disk fills up after two checkpoints: the next save fails (its temporary file is
    removed, last.pt keeps the previous checkpoint); after space is freed ``--resume``
    completes exactly like the reference."""
    with DiskFault("full", tmp_path) as fault:
        out, watch = fault.out, FolderWatch(fault.out)
        failed = run(job(kind, fault_data, out), out, tmp_path / "failed.log", watch,
                     act=break_after(fault))
        assert_failed_cleanly(failed, watch, out / "last.pt", "checkpoint", fault.errno_name)
        hint = "free space" if fault.errno_name == "ENOSPC" else "raise the file-size limit (ulimit -f)"
        assert f"{hint}, then rerun with --resume" in failed.output
        assert saved_epoch(out) >= 1
        fault.repair()
        ok(run(job(kind, fault_data, out, "--resume"), out, tmp_path / "resumed.log", watch))
        watch.check()
        assert_same_run(out, references(kind).summary)


def test_failed_metrics_write_resumes_exactly(fault_data, references, tmp_path):
    """Pretraining whose metrics.jsonl cannot grow past the middle of a record (a file-size
    limit set just above its size, mid-epoch): the run stops naming metrics.jsonl, the record it
    was writing torn in half; ``--resume`` drops the torn line and the records after its
    checkpoint, and ends exactly like the reference (each step recorded once)."""
    out, watch = tmp_path / "run", FolderWatch(tmp_path / "run")
    metrics = out / "metrics.jsonl"
    done: list[bool] = []

    def limit_mid_epoch(child: Child, names, now) -> bool:
        if not done and "epoch_0001.pt" in names and b'"epoch": 2' in metrics.read_bytes():
            os.killpg(child.proc.pid, signal.SIGSTOP)
            try:
                limit = metrics.stat().st_size + 60  # a record is about 150 bytes
                resource.prlimit(child.proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
            finally:
                os.killpg(child.proc.pid, signal.SIGCONT)
            done.append(True)
        return False

    failed = run(job("pretrain", fault_data, out), out, tmp_path / "failed.log", watch, act=limit_mid_epoch)
    assert_failed_cleanly(failed, watch, metrics, "metrics", "EFBIG")
    assert not metrics.read_bytes().endswith(b"\n")  # the torn record
    assert saved_epoch(out) >= 1
    ok(run(job("pretrain", fault_data, out, "--resume"), out, tmp_path / "resumed.log", watch))
    watch.check()
    assert_same_run(out, references("pretrain").summary)


def test_a_file_size_limit_does_not_reach_the_log(tmp_path):
    """A child under a file-size limit smaller than its output: its writes to files fail, its
    output (through a pipe) reaches the log whole, down to the last line a test reads."""
    script = ("import sys\nprint('x' * 4000, flush=True)\n"
              "try:\n    with open('big', 'wb') as fh:\n        fh.write(b'y' * 4096)\n"
              "except OSError as exc:\n    print(f'error: {exc.strerror}', flush=True)\n")
    child = Child([sys.executable, "-c", script], tmp_path / "child.log", file_size_limit=1024)
    outcome = drive(child, FolderWatch(tmp_path / "run"))
    assert outcome.returncode == 0, outcome.output
    assert outcome.output.splitlines() == ["x" * 4000, "error: File too large"]
