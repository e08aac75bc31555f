"""Extraction in supervised worker processes: a per-video time limit, and crashes contained.

Each worker is a spawned process that writes whole shards (the job's ``write_shard``) and tells the
parent, through a pipe of its own, which video it is on. The parent kills a worker whose video runs
past ``video_timeout`` seconds (a hang inside FFmpeg or compiled code, which no check inside the
worker could see) and notices a worker that dies (a segfault, the out-of-memory killer, a stray
``kill``). Either way the video is written to the job's :class:`FaultLog`, the worker's temporary
shard removed and the shard redone by a fresh worker: without that video after a timeout, with it
again after a death until it has taken ``retries + 1`` workers down. A worker lost between videos
(while writing its tar) costs the shard one of its ``retries``.

spawn, not fork: a forked worker inherits PyAV objects of the parent whose FFmpeg threads it lacks,
and hangs for ever when the garbage collector frees them (sws_freeContext joins them).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable

from mvmae.shards.faults import FaultLog
from mvmae.shards.writer import WriteError, remove_quietly

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl option (Linux): a signal for this process when its parent dies


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    task: object = None  # the ShardTask in progress, None when idle
    phase: str = ""  # "start", "video" or "write" while busy
    video: int = 0  # index in task.entries of the video in progress
    since: float = 0.0  # time.monotonic() when the phase began
    timed_out: bool = False  # killed by the parent for running past the time limit
    blame: tuple[str, int] = ("", 0)  # (phase, video) that ran past the limit, when timed_out
    retired: bool = False  # reported an error and is exiting: give it no more work


class WorkerPool:
    """Runs shard tasks on ``config.workers`` supervised processes (see the module docstring).

    write_shard(task, config, job_id, excluded, on_phase) writes one shard; report(n) is called
    with the number of videos done; out_dir is where the workers' temporary files lie.
    """

    def __init__(self, write_shard: Callable, config, job_id: str, faults: FaultLog,
                 report: Callable[[int], None], done: int) -> None:
        self.write_shard, self.config, self.job_id = write_shard, config, job_id
        self.faults, self.report, self.done = faults, report, done
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.queue: deque = deque()
        self.attempts: Counter = Counter()  # shard index -> workers lost between its videos
        self.failed: list = []

    def run(self, tasks: list) -> list:
        """Write every task's shard; returns the tasks given up after ``retries`` lost workers.

        Raises :class:`WriteError` (all workers stopped, their temporary files removed) when a
        worker cannot write its output.
        """
        self.queue.extend(tasks)
        try:
            while self.queue or self._busy():
                self._dispatch()
                self._wait()
                self._enforce_time_limit()
        finally:
            self._shutdown()
        return self.failed

    def _busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.task is not None]

    def _timed(self) -> list[_Worker]:
        """Busy workers under the time limit: on a video or writing their tar (not while a
        fresh process starts up), and not already killed."""
        return [w for w in self._busy() if w.phase in ("video", "write") and not w.timed_out]

    def _dispatch(self) -> None:
        while self.queue and len(self._busy()) < self.config.workers:
            idle = [w for w in self.workers if w.task is None and not w.retired]
            worker = idle[0] if idle else self._start()
            task = self.queue.popleft()
            excluded = self.faults.excluded(task.entries, self.config.retries)
            try:
                worker.conn.send((task, excluded))
            except OSError:
                if idle:  # it died while idle: the next round notices and replaces it
                    self.queue.appendleft(task)
                    return
                # a fresh worker that died starting up costs the task a try, as any worker lost
                # outside a video: one that always dies is not replaced for ever
            worker.task, worker.phase, worker.since = task, "start", time.monotonic()

    def _start(self) -> _Worker:
        parent_end, child_end = self.ctx.Pipe()
        level = logging.getLogger("mvmae").getEffectiveLevel()
        process = self.ctx.Process(target=_worker_main, daemon=True, args=(
            child_end, self.write_shard, self.config, self.job_id, os.getpid(), level))
        process.start()
        child_end.close()  # so that the parent sees EOF when the worker dies
        worker = _Worker(process, parent_end)
        self.workers.append(worker)
        return worker

    def _wait(self) -> None:
        """Handle what the workers said and which of them exited, waiting at most until the
        next time limit runs out."""
        now = time.monotonic()
        deadlines = [w.since + self.config.video_timeout - now for w in self._timed()]
        timeout = max(0.0, min(deadlines)) + 0.01 if deadlines else None
        handles = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
        ready = set(wait(handles, timeout))
        for worker in list(self.workers):
            if worker.conn in ready or worker.process.sentinel in ready:
                if not self._receive(worker) or worker.process.sentinel in ready:
                    self._on_exit(worker)

    def _receive(self, worker: _Worker) -> bool:
        """Read every message waiting on the worker's pipe; False once it is closed."""
        try:
            while worker.conn.poll():
                kind, value = worker.conn.recv()
                self._on_message(worker, kind, value)
        except (EOFError, OSError):
            return False
        return True

    def _on_message(self, worker: _Worker, kind: str, value) -> None:
        now = time.monotonic()
        if kind in ("video", "write"):
            worker.phase, worker.video, worker.since = kind, value, now
            self._report()
        elif kind == "done":
            self.done += len(worker.task.entries)
            worker.task, worker.phase = None, ""
            self._report()
        elif kind == "write_error":
            path, errno, strerror = value
            raise WriteError(path, OSError(errno, strerror))
        elif kind == "error":  # a bug outside any one video: the worker exits after saying so
            log.error("%s: %s", worker.task.name, value)
            self._lost_between_videos(worker.task, value)
            worker.task, worker.retired = None, True

    def _report(self) -> None:
        self.report(self.done + sum(w.video for w in self._busy() if w.phase == "video"))

    def _on_exit(self, worker: _Worker) -> None:
        self._receive(worker)
        worker.process.join()
        worker.conn.close()
        self.workers.remove(worker)
        _remove_temporaries(self.config.out_dir, worker.process.pid)
        task = worker.task
        if task is None:
            return
        cause = _exit_cause(worker.process.exitcode)
        phase, video = worker.blame if worker.timed_out else (worker.phase, worker.video)
        if phase == "video":
            entry = task.entries[video]
            if worker.timed_out:
                log.warning("%s: still extracting after %g s (--video-timeout): worker killed, "
                            "video recorded 'timeout'", entry.path, self.config.video_timeout)
                self.faults.record_timeout(entry, task.name, self.config.video_timeout)
            else:
                deaths = self.faults.record_death(entry, task.name, cause)
                log.warning("%s: the worker extracting it died (%s), %d of %d tries", entry.path,
                            cause, deaths, self.config.retries + 1)
            self.queue.appendleft(task)
        else:
            self._lost_between_videos(task, cause + (" (time limit)" if worker.timed_out else ""))
        self._report()

    def _lost_between_videos(self, task, cause: str) -> None:
        self.attempts[task.index] += 1
        if self.attempts[task.index] > self.config.retries:
            log.error("%s: given up after %d lost workers (last: %s)", task.name,
                      self.attempts[task.index], cause)
            self.failed.append(task)
        else:
            log.warning("%s: worker lost outside a video (%s); shard redone", task.name, cause)
            self.queue.appendleft(task)

    def _enforce_time_limit(self) -> None:
        """Kill the workers whose phase has run past the limit, blaming that phase's video.

        A message sent since the last wait (the worker moved on, or finished) is read first, so
        that a parent held up past the limit does not kill a worker that kept up; the video is
        captured before the kill, as messages still in the pipe afterwards are of later ones.
        """
        for worker in self._timed():
            if time.monotonic() - worker.since <= self.config.video_timeout:
                continue
            if not self._receive(worker) or worker not in self._timed():
                continue  # it exited (the next wait sees it) or is no longer on a timed phase
            if time.monotonic() - worker.since > self.config.video_timeout:
                worker.timed_out, worker.blame = True, (worker.phase, worker.video)
                worker.process.kill()

    def _shutdown(self) -> None:
        """Stop every worker (idle ones are asked, busy ones killed) and remove their files."""
        for worker in self.workers:
            try:
                if worker.task is None:
                    worker.conn.send(None)
                else:
                    worker.process.kill()
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(10)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
            _remove_temporaries(self.config.out_dir, worker.process.pid)
        self.workers = []


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def _remove_temporaries(out_dir: Path, pid: int) -> None:
    """The temporary files a (dead) worker was writing: ``.<name>.tmp-<pid>``."""
    for tmp in Path(out_dir).glob(f".*.tmp-{pid}"):
        remove_quietly(tmp)


def _worker_main(conn: Connection, write_shard: Callable, config, job_id: str, parent_pid: int,
                 log_level: int) -> None:
    """A worker process: write the shards the parent sends until it sends None."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    _log_to_stderr(log_level)

    def on_phase(phase: str, index: int) -> None:
        conn.send((phase, index))

    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        task, excluded = item
        try:
            write_shard(task, config, job_id, excluded, on_phase)
        except WriteError as exc:
            conn.send(("write_error", (exc.path, exc.errno, exc.reason)))
            return
        except Exception as exc:  # a bug: report it to the parent, which redoes the shard
            log.exception("%s: unexpected error", task.name)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("done", 0))


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker when the job's process dies (kill -9 of the parent
    alone), so that no orphan goes on extracting or hangs for ever."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: an orphan stops at its next message instead
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class _LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _log_to_stderr(level: int) -> None:
    """The worker's mvmae log records on stderr as 'level: message' lines, like the CLI's."""
    handler = logging.StreamHandler()
    handler.setFormatter(_LevelPrefix())
    logger = logging.getLogger("mvmae")
    logger.addHandler(handler)
    logger.setLevel(level)
