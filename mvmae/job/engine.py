"""The seam between the job and what runs its shards: one small interface, two engines.

An engine gets the shards still to build (``ShardTask``s) and a :class:`ShardRun` (the job's
config and id, its fault records, the progress callback and the per-shard function
``build(task, config, job_id, excluded, on_phase) -> stats``), builds every shard with ``build``
and returns the tasks it gave up on. Per video the rules are the local supervisor's
(:class:`mvmae.job.workers.WorkerPool`): a time limit, ``timeout``/``crashed`` records, the shard
redone without a bad video. Only the calling process (the driver) writes fault records; the job
(:mod:`mvmae.job.job`) writes the job record and the manifest after the engine returns.

- :class:`LocalEngine`: supervised worker processes on this machine (``workers=0``: in this
  process, unprotected).
- ``RayEngine`` (:mod:`mvmae.job.ray_engine`, ``pip install 'mvmae[ray]'``): one Ray task per
  shard, each running the local supervisor with one worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from mvmae.job.faults import FaultLog
from mvmae.job.workers import WorkerPool

if TYPE_CHECKING:
    from mvmae.job.job import JobConfig, ShardTask


@dataclass
class ShardRun:
    """What an engine needs besides the tasks. report(n): videos done so far (``done`` of them
    before this run); build: the per-shard function (``job.build_shard``)."""

    config: JobConfig
    job_id: str
    faults: FaultLog
    report: Callable[[int], None]
    done: int
    build: Callable[..., dict]
    num_redone: int = 0  # set by the engine: shard attempts started again after a lost worker


class Engine(Protocol):
    def run(self, tasks: list[ShardTask], run: ShardRun) -> list[ShardTask]:
        """Build every task's shard; returns the tasks given up (failed past the retries)."""


class LocalEngine:
    """Supervised worker processes on this machine (``config.workers``; 0: in this process)."""

    def run(self, tasks: list[ShardTask], run: ShardRun) -> list[ShardTask]:
        config, done = run.config, run.done
        if config.workers > 0:
            pool = WorkerPool(run.build, config, run.job_id, run.faults, run.report, done)
            failed = pool.run(tasks)
            run.num_redone = pool.num_redone
            return failed
        failed = []  # in this process: no time limit, no protection from crashes
        for task in tasks:
            stats = run.build(task, config, run.job_id, run.faults.excluded(task.entries, config.retries),
                              lambda phase, i, base=done: run.report(base + i))
            if "upload_error" in stats:
                failed.append(task)
            done += len(task.entries)
            run.report(done)
        return failed


def engine_of(config: JobConfig) -> Engine:
    """The engine ``config.engine`` names ("local" or "ray")."""
    if config.engine == "ray":
        from mvmae.job.ray_engine import RayEngine

        return RayEngine(config.ray_address)
    return LocalEngine()
