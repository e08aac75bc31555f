"""Processes for the fault-injection tests, read from /proc: state, group, descendants, command
lines, and kill -9 of a whole process tree; and the environment this process and those it starts
see, for a while (:func:`environment`). Plain functions, shared by the extraction, shard and
training fault helpers (``extract_faults``, ``train_faults``), the loopback servers and tests."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Iterator


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, T (stopped), Z, ...), None if gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def process_group(pid: int) -> int | None:
    """The process group of ``pid`` (None if it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie no longer writes)."""
    return process_state(pid) not in (None, "Z", "X")


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    return [pid for pid in _pids() if process_group(pid) == pgid and is_running(pid)]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc's parent links."""
    parents = {}
    for child in _pids():
        fields = _stat_fields(child)
        if fields:
            parents[child] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def processes_with(marker: str) -> list[str]:
    """Command lines of this machine's processes that contain ``marker``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if marker in text:
            found.append(text)
    return found


def wait_for(condition, limit_s: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill_tree(pid: int, limit_s: float = 30) -> None:
    """SIGKILL to ``pid``'s process group and to every descendant's and itself (torchrun starts
    each worker in a session of its own), then wait until none of them runs any more (a dying
    process still holds its files open for a moment). The caller reaps ``pid`` itself."""
    pids = [pid, *descendants(pid)]
    for target in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
    wait_for(lambda: not any(is_running(p) for p in pids[1:]), limit_s, f"processes {pids[1:]} to die")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` (seen by this process and the processes it starts)
    until the block ends, then as it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
