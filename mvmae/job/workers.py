"""Work in supervised worker processes: a time limit per phase of an item, crashes contained.

:class:`Supervisor` runs work items on spawned processes, each with a pipe of its own through
which the worker says which phase of its item it is on (``send("phase", (name, index))``). The
parent kills a worker whose timed phase runs past the limit (a hang inside FFmpeg or compiled
code, which no check inside the worker could see) and notices a worker that dies (a segfault, the
out-of-memory killer, a stray ``kill``); either way it tells its :class:`Work` which item was lost
on which phase. Workers ignore SIGINT (Ctrl-C reaches the parent, which stops them) and are killed
by the kernel when the parent dies. ``mvmae check`` probes files on it
(:mod:`mvmae.shards.check_files`).

:class:`WorkerPool` is the extraction job's rules on top: each worker writes whole shards (the
job's ``write_shard``); a video that runs past ``video_timeout`` or kills its worker is written to
the job's :class:`FaultLog`, the worker's temporary shard removed and the shard redone by a fresh
worker: without that video after a timeout, with it again after a death until it has taken
``retries + 1`` workers down. A worker lost between videos (starting up, or writing its tar) costs
the shard one of its ``retries``.

spawn, not fork: a forked worker inherits PyAV objects of the parent whose FFmpeg threads it lacks,
and hangs for ever when the garbage collector frees them (sws_freeContext joins them).
"""

from __future__ import annotations

import ctypes
import functools
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

from mvmae.console import LevelFormatter
from mvmae.job.faults import FaultLog
from mvmae.shards.writer import WriteError, remove_quietly, stale_temporaries

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl option (Linux): a signal for this process when its parent dies


@dataclass
class Lost:
    """How a worker was lost with an item in hand: the phase and index it was on (phase
    "start" before its first phase message), its exit ("killed by SIGSEGV", "exit status 1")
    and whether the supervisor killed it for running past the time limit."""

    phase: str
    index: int
    cause: str
    timed_out: bool


class Work:
    """What the user of a :class:`Supervisor` decides; each method has a default. The item is
    the one given to :meth:`Supervisor.submit`; these run in the parent process."""

    def payload(self, item) -> object:  # what the worker gets for item, when it takes it
        return item

    def on_phase(self, item, phase: str, index: int) -> None:  # a phase of item began
        pass

    def on_message(self, item, kind: str, value) -> None:  # any other kind (may raise: stops all)
        raise ValueError(f"unexpected worker message {kind!r}")

    def on_done(self, item, value) -> None:  # the work function returned value
        pass

    def on_error(self, item, phase: str, index: int, message: str) -> None:
        """The work function raised (``message``: type and text); the worker exits."""

    def on_lost(self, item, lost: Lost) -> None:
        """The worker died or was killed with ``item`` in hand (submit it again if it should)."""

    def on_exit(self, pid: int) -> None:  # a worker process ended: remove what it left behind
        pass


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    item: object = None  # the item in progress, None when idle
    phase: str = ""  # "start" until the worker names a phase of the item
    index: int = 0  # the phase's index in the item
    since: float = 0.0  # time.monotonic() when the phase began
    blame: tuple[str, int] | None = None  # (phase, index) it was killed on, past the time limit
    retired: bool = False  # reported an error and is exiting: give it no more work


class Supervisor:
    """Runs items on ``num_workers`` supervised processes (see the module docstring).

    work_fn(payload, send) runs in a worker for each item (a picklable module-level function or
    partial); send(kind, value) talks to the parent: ``("phase", (name, index))`` starts a phase,
    other kinds go to ``work.on_message``. Phases named in ``timed_phases`` may take at most
    ``time_limit`` seconds each.
    """

    def __init__(self, work_fn: Callable, work: Work, num_workers: int, time_limit: float,
                 timed_phases: tuple[str, ...]) -> None:
        self.work_fn, self.work = work_fn, work
        self.num_workers, self.time_limit, self.timed_phases = num_workers, time_limit, timed_phases
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.queue: deque = deque()

    def submit(self, item, front: bool = False) -> None:
        (self.queue.appendleft if front else self.queue.append)(item)

    def run(self) -> None:
        """Run until every submitted item is done or lost; all workers stopped on return, also
        when a :class:`Work` callback raises."""
        try:
            while self.queue or self.busy():
                self._dispatch()
                self._wait()
                self._enforce_time_limit()
        finally:
            self._shutdown()

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.item is not None]

    def _timed(self) -> list[_Worker]:
        """Busy workers under the time limit: on a timed phase and not already killed."""
        return [w for w in self.busy() if w.phase in self.timed_phases and w.blame is None]

    def _dispatch(self) -> None:
        while self.queue and len(self.busy()) < self.num_workers:
            idle = [w for w in self.workers if w.item is None and not w.retired]
            worker = idle[0] if idle else self._start()
            item = self.queue.popleft()
            try:
                worker.conn.send(self.work.payload(item))
            except OSError:
                if idle:  # it died while idle: the next round notices and replaces it
                    self.queue.appendleft(item)
                    return
                # a fresh worker that died starting up is lost with the item (phase "start"),
                # so that its Work counts it: one that always dies is not replaced for ever
            worker.item, worker.phase, worker.index, worker.since = item, "start", 0, time.monotonic()

    def _start(self) -> _Worker:
        parent_end, child_end = self.ctx.Pipe()
        level = logging.getLogger("mvmae").getEffectiveLevel()
        process = self.ctx.Process(target=_worker_main, daemon=True,
                                   args=(child_end, self.work_fn, os.getpid(), level))
        process.start()
        child_end.close()  # so that the parent sees EOF when the worker dies
        worker = _Worker(process, parent_end)
        self.workers.append(worker)
        return worker

    def _wait(self) -> None:
        """Handle what the workers said and which of them exited, waiting at most until the
        next time limit runs out."""
        now = time.monotonic()
        deadlines = [w.since + self.time_limit - now for w in self._timed()]
        timeout = max(0.0, min(deadlines)) + 0.01 if deadlines else None
        handles = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
        ready = set(wait(handles, timeout))
        for worker in list(self.workers):
            if worker.conn in ready or worker.process.sentinel in ready:
                if not self._receive(worker) or worker.process.sentinel in ready:
                    self._on_exit(worker)

    def _receive(self, worker: _Worker) -> bool:
        """Read every message waiting on the worker's pipe; False once it is closed."""
        while True:
            try:
                if not worker.conn.poll():
                    return True
                kind, value = worker.conn.recv()
            except (EOFError, OSError):  # the pipe only: a WriteError of a message goes on
                return False
            self._on_message(worker, kind, value)

    def _on_message(self, worker: _Worker, kind: str, value) -> None:
        item = worker.item
        if kind == "phase":
            worker.phase, worker.index = value
            worker.since = time.monotonic()
            self.work.on_phase(item, *value)
        elif kind == "done":
            worker.item, worker.phase = None, ""
            self.work.on_done(item, value)
        elif kind == "error":  # the work function raised: the worker exits after saying so
            worker.item, worker.retired = None, True
            self.work.on_error(item, worker.phase, worker.index, value)
        else:
            self.work.on_message(item, kind, value)

    def _on_exit(self, worker: _Worker) -> None:
        self._receive(worker)  # what it said before it died: done, an error, later phases
        worker.process.join()
        worker.conn.close()
        self.workers.remove(worker)
        self.work.on_exit(worker.process.pid)
        if worker.item is None:
            return
        phase, index = worker.blame or (worker.phase, worker.index)
        self.work.on_lost(worker.item, Lost(phase, index, _exit_cause(worker.process.exitcode),
                                            worker.blame is not None))

    def _enforce_time_limit(self) -> None:
        """Kill the workers whose phase has run past the limit, blaming that phase.

        A message sent since the last wait (the worker moved on, or finished) is read first, so
        that a parent held up past the limit does not kill a worker that kept up; the phase is
        captured before the kill, as messages still in the pipe afterwards are of later ones.
        """
        for worker in self._timed():
            if time.monotonic() - worker.since <= self.time_limit:
                continue
            if not self._receive(worker) or worker not in self._timed():
                continue  # it exited (the next wait sees it) or is no longer on a timed phase
            if time.monotonic() - worker.since > self.time_limit:
                worker.blame = (worker.phase, worker.index)
                worker.process.kill()

    def _shutdown(self) -> None:
        """Stop every worker (idle ones are asked, busy ones killed)."""
        for worker in self.workers:
            try:
                if worker.item is None:
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
            self.work.on_exit(worker.process.pid)
        self.workers = []


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is None or exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"killed by signal {-exitcode}"


def _worker_main(conn: Connection, work_fn: Callable, parent_pid: int, log_level: int) -> None:
    """A worker process: run work_fn on what the parent sends until it sends None."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    _log_to_stderr(log_level)

    def send(kind: str, value=None) -> None:
        conn.send((kind, value))

    while True:
        try:
            payload = conn.recv()
        except EOFError:
            return
        if payload is None:
            return
        try:
            value = work_fn(payload, send)
        except Exception as exc:  # a bug: report it to the parent, whose Work decides
            log.exception("unexpected error in a worker process")
            send("error", f"{type(exc).__name__}: {exc}")
            return
        send("done", value)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker when the parent process dies (kill -9 of the parent
    alone), so that no orphan goes on working or hangs for ever."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: an orphan stops at its next message instead
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _log_to_stderr(level: int) -> None:
    """The worker's mvmae log records on stderr as 'level: message' lines, like the CLI's."""
    handler = logging.StreamHandler()
    handler.setFormatter(LevelFormatter())
    logger = logging.getLogger("mvmae")
    logger.addHandler(handler)
    logger.setLevel(level)


# ----------------------------------------------------------------------------- extraction


class WorkerPool(Work):
    """Runs shard tasks on ``config.workers`` supervised processes (see the module docstring).

    write_shard(task, config, job_id, excluded, on_phase) writes one shard in a worker; report(n)
    is called with the number of videos done; done: videos already done before this run. The
    workers' temporary files lie in ``config.out_dir``. The time limit, ``config.video_timeout``,
    applies to each video and to the final write of the shard's tar.
    """

    def __init__(self, write_shard: Callable, config, job_id: str, faults: FaultLog,
                 report: Callable[[int], None], done: int) -> None:
        self.config, self.faults, self.report, self.done = config, faults, report, done
        work_fn = functools.partial(_write_shard_in_worker, write_shard, config, job_id)
        self.supervisor = Supervisor(work_fn, self, config.workers, config.video_timeout,
                                     ("video", "write"))
        self.attempts: Counter = Counter()  # shard index -> workers lost between its videos
        self.failed: list = []
        self.num_redone = 0  # shards started again after a lost worker (their videos counted again)
        self.shown = done  # videos reported so far: the count only moves forward, but for a redo

    def run(self, tasks: list) -> list:
        """Write every task's shard; returns the tasks given up after ``retries`` lost workers.

        Raises :class:`WriteError` (all workers stopped, their temporary files removed) when a
        worker cannot write its output.
        """
        for task in tasks:
            self.supervisor.submit(task)
        self.supervisor.run()
        return self.failed

    def payload(self, task) -> tuple:
        return task, self.faults.excluded(task.entries, self.config.retries)

    def on_phase(self, task, phase: str, index: int) -> None:
        self._report()

    def on_done(self, task, value) -> None:
        self.done += len(task.entries)
        if isinstance(value, dict) and "upload_error" in value:  # built, not uploaded: the next run
            self.failed.append(task)
        self._report()

    def on_message(self, task, kind: str, value) -> None:
        if kind != "write_error":
            super().on_message(task, kind, value)
        path, errno, strerror = value
        raise WriteError(path, OSError(errno, strerror))

    def on_error(self, task, phase: str, index: int, message: str) -> None:
        log.error("%s: %s", task.name, message)  # a bug outside any one video
        self._lost_between_videos(task, message)

    def on_lost(self, task, lost: Lost) -> None:
        if lost.phase == "video":
            entry = task.entries[lost.index]
            if lost.timed_out:
                log.warning("%s: still extracting after %g s (--video-timeout): worker killed, "
                            "video recorded 'timeout'", entry.path, self.config.video_timeout)
                self.faults.record_timeout(entry, task.name, self.config.video_timeout)
            else:
                deaths = self.faults.record_death(entry, task.name, lost.cause)
                log.warning("%s: the worker extracting it died (%s), %d of %d tries", entry.path,
                            lost.cause, deaths, self.config.retries + 1)
            self._redo(task)
        else:
            self._lost_between_videos(task, lost.cause + (" (time limit)" if lost.timed_out else ""))
        self._report(redone=True)

    def on_exit(self, pid: int) -> None:
        _remove_temporaries(self.config.out_dir, pid)

    def _report(self, redone: bool = False) -> None:
        """Report the videos done: whole shards, plus each busy worker's finished videos (phase
        ``video`` i: i done; ``write`` n: all n done, the tar being written). The count never goes
        back, except after a lost worker (``redone``): its shard's videos are extracted again."""
        busy = self.supervisor.busy()
        done = self.done + sum(w.index for w in busy if w.phase in ("video", "write"))
        if done >= self.shown or redone:
            self.shown = done
            self.report(done)

    def _redo(self, task) -> None:
        self.num_redone += 1
        self.supervisor.submit(task, front=True)

    def _lost_between_videos(self, task, cause: str) -> None:
        self.attempts[task.index] += 1
        if self.attempts[task.index] > self.config.retries:
            log.error("%s: given up after %d lost workers (last: %s)", task.name,
                      self.attempts[task.index], cause)
            self.failed.append(task)
        else:
            log.warning("%s: worker lost outside a video (%s); shard redone", task.name, cause)
            self._redo(task)


def _remove_temporaries(out_dir: Path, pid: int) -> None:
    """The temporary files a (dead) worker was writing (named with this machine and its pid)."""
    for tmp in stale_temporaries(Path(out_dir), pid=pid):
        remove_quietly(tmp)


def _write_shard_in_worker(write_shard: Callable, config, job_id: str, payload: tuple,
                           send: Callable) -> dict | None:
    """Write one shard in a worker, its progress and a write error sent to the parent (which
    stops the job on it); returns the shard's stats (None after a write error)."""
    task, excluded = payload
    try:
        return write_shard(task, config, job_id, excluded, lambda phase, i: send("phase", (phase, i)))
    except WriteError as exc:
        send("write_error", (exc.path, exc.errno, exc.reason))
        return None
