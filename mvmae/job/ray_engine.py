"""The Ray engine (``mvmae extract run --engine ray``; ``pip install 'mvmae[ray]'``): one Ray task
per shard, each running the same supervised extraction as a local job with one worker.

Inside its task a shard is built by :class:`mvmae.job.workers.WorkerPool` exactly as locally
(the same ``build`` function, so the same bytes): a video past the time limit or one that kills
its worker process is recorded (``timeout``/``crashed``) and the shard redone without it, so one
bad video never costs a Ray retry. The task records faults in a detached
:class:`~mvmae.job.faults.FaultLog` seeded with the driver's records of its videos and hands them
back; only the driver saves fault records (and, after the engine, the job record and manifest).
Ray's own retries (``max_retries``) cover a task whose Ray worker process or node dies: the task
is run again from the start, and since a shard becomes visible only whole (a rename, or the
commit marker after the upload) a repeat writes the same bytes again.

The progress bar counts videos as a local job's does: each task's supervisor reports the videos
done in its shard to a small Ray actor (:class:`ShardProgress`, no CPU of its own), whose answer
to the driver's standing question "what changed?" wakes the driver as the tasks' ends do; the
count it shows never goes back (a task that Ray runs again counts from the videos it had shown). The end-of-job
summary counts the shards redone: those a task's supervisor redid (a video that crashed or hung
its worker) and the tasks that Ray ran again (each task waits for its attempt number from the
actor before it starts work, and hands it back with its result).

Without an address (nor ``RAY_ADDRESS``) a new local Ray instance is started with
``config.workers`` CPUs (one task each), even if another runs on this machine, and stopped at the
end; with one, the job joins that cluster (``ray.init(address)``), whose nodes need mvmae
installed and, for a local OUT, the same shared folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from mvmae.job.faults import FaultLog
from mvmae.job.workers import WorkerPool
from mvmae.shards.fetch import MissingExtraError

if TYPE_CHECKING:
    from mvmae.job.engine import ShardRun
    from mvmae.job.job import JobConfig, ShardTask

log = logging.getLogger(__name__)

RAY_TASK_RETRIES = 3  # Ray's retries of a shard whose Ray worker or node died
PROGRESS_WAIT_S = 5.0  # the longest the progress actor holds the driver's question unanswered


def import_ray():
    """The ray module; :class:`MissingExtraError` naming the extra when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("--engine ray needs Ray: pip install 'mvmae[ray]'") from exc
    return ray


class ShardProgress:
    """Videos done in each shard being built (shard index -> count), as its task last reported
    them, and the tasks started per shard: the state of a Ray actor (asyncio; ``ray.remote(
    num_cpus=0)(ShardProgress)``), one per job. ``changes(version)`` answers when the counts
    differ from those of ``version``."""

    def __init__(self) -> None:
        self.videos_done: dict[int, int] = {}
        self.attempts: dict[int, int] = {}  # tasks started per shard: Ray runs one again when its worker dies
        self.version = 0
        self.changed = None  # asyncio.Event of the driver's pending question, made in the actor's loop

    def _bump(self) -> None:
        self.version += 1
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    async def start(self, index: int) -> int:
        """A task for shard ``index`` started; returns its attempt (1, then 2 when Ray runs it again)."""
        self.attempts[index] = self.attempts.get(index, 0) + 1
        self.videos_done[index] = 0
        self._bump()
        return self.attempts[index]

    async def update(self, index: int, num_videos: int) -> None:
        self.videos_done[index] = num_videos
        self._bump()

    async def changes(self, version: int, timeout_s: float) -> tuple[int, dict[int, int]]:
        """(version, counts) as soon as the version is past ``version``, at the latest after
        ``timeout_s``."""
        import asyncio

        if self.version == version:
            if self.changed is None:
                self.changed = asyncio.Event()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.version, dict(self.videos_done)


def build_on_ray(task: ShardTask, config: JobConfig, job_id: str, faults: dict[str, dict],
                 progress=None) -> dict:
    """One shard, in a Ray task: the local supervisor with one worker. progress: the job's
    :class:`ShardProgress` actor (None: nothing reported). Returns ``{"stats": stats or None,
    "failed": bool, "faults": records of its videos, "num_redone": shard attempts its supervisor
    started again, plus 1 per earlier Ray attempt of this task}``."""
    attempt = 1
    if progress is not None:
        # Waited for, before any work: a call only sent is lost with its worker when that worker is
        # killed, and this attempt number is how the driver learns that Ray ran the task again.
        # Actor calls of one caller run in order, so it lands before the task's updates.
        ray = import_ray()
        try:
            attempt = ray.get(progress.start.remote(task.index))
        except ray.exceptions.RayError as exc:  # no actor: no progress shown, the shard still built
            log.warning("%s: no progress reporting (%s)", task.name, exc)
            progress = None
    detached = FaultLog.detached(job_id, faults)
    built: list[dict] = []

    class _Pool(WorkerPool):
        def on_done(self, task_, value) -> None:
            super().on_done(task_, value)
            if isinstance(value, dict):
                built.append(value)

    from mvmae.files import ensure_folder
    from mvmae.job.job import build_shard

    ensure_folder(config.out_dir)  # on another node: the scratch folder (or shared OUT) may be new here
    local = dataclasses.replace(config, workers=1, engine="local")

    def report(num_videos: int) -> None:
        if progress is not None:
            progress.update.remote(task.index, num_videos)  # not waited for

    pool = _Pool(build_shard, local, job_id, detached, report, 0)
    failed = pool.run([task])
    stats = built[-1] if built else None
    return {"stats": stats, "failed": bool(failed) or stats is None or "upload_error" in stats,
            "faults": detached.records(e.key for e in task.entries), "num_redone": pool.num_redone + attempt - 1}


class RayEngine:
    """One Ray task per shard (see the module docstring). address: the cluster to join (None:
    the one ``RAY_ADDRESS`` names, else a new local instance with ``config.workers`` CPUs)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def run(self, tasks: list[ShardTask], run: ShardRun) -> list[ShardTask]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            # Ray's own rule for "no address" is "the cluster last started on this machine, if any";
            # the job's is a fresh local instance unless an address (or RAY_ADDRESS) names one.
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            options = ({"address": address} if address
                       else {"address": "local", "num_cpus": max(1, run.config.workers)})
            ray.init(include_dashboard=False, logging_level=logging.WARNING, **options)
        try:
            return self._run(ray, tasks, run)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, tasks: list[ShardTask], run: ShardRun) -> list[ShardTask]:
        remote = ray.remote(num_cpus=1, max_retries=RAY_TASK_RETRIES, retry_exceptions=False)(build_on_ray)
        progress = ray.remote(num_cpus=0)(ShardProgress).remote()
        refs = {remote.remote(t, run.config, run.job_id, run.faults.records(e.key for e in t.entries), progress): t
                for t in tasks}
        pending, failed = list(refs), []
        bar = _VideoCount(run)
        watch = _ProgressWatch(ray, progress, bar)
        while pending:
            (ready,), _ = ray.wait(pending + watch.refs(), num_returns=1)
            if watch.answered(ready):  # the counts changed (or the wait ended): shown, asked again
                continue
            pending.remove(ready)
            task = refs[ready]
            try:
                result = ray.get(ready)
            except ray.exceptions.RayError as exc:  # its workers kept dying, or a bug
                log.error("%s: the Ray task failed: %s", task.name, str(exc).splitlines()[0] if str(exc) else exc)
                failed.append(task)
                bar.shard_ended(task, built=False)
                continue
            bar.shard_ended(task)
            run.num_redone += result["num_redone"]
            run.faults.merge(result["faults"])
            if result["failed"]:
                failed.append(task)
        return sorted(failed, key=lambda t: t.index)


class _ProgressWatch:
    """The driver's standing question to the :class:`ShardProgress` actor: each answer goes to
    the bar and the question is asked again; if the actor fails, the bar moves by whole shards."""

    def __init__(self, ray, actor, bar: _VideoCount) -> None:
        self.ray, self.actor, self.bar = ray, actor, bar
        self.question = actor.changes.remote(0, PROGRESS_WAIT_S)

    def refs(self) -> list:
        return [self.question] if self.question is not None else []

    def answered(self, ref) -> bool:
        """Whether ``ref`` is the question (then answered, shown and asked again)."""
        if self.question is None or ref != self.question:
            return False
        try:
            version, videos_done = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            log.debug("no progress from the actor any more: %s", exc)
            self.question = None
            return True
        self.bar.show(videos_done)
        self.question = self.actor.changes.remote(version, PROGRESS_WAIT_S)
        return True


class _VideoCount:
    """The videos done that the driver reports: those of ended shards (and of earlier runs) plus
    what the tasks still running last reported; the count shown never goes back."""

    def __init__(self, run: ShardRun) -> None:
        self.run, self.ended_videos, self.ended = run, run.done, set()
        self.videos_done: dict[int, int] = {}  # of the shards being built, as last reported
        self.shown = run.done
        run.report(run.done)

    def shard_ended(self, task: ShardTask, built: bool = True) -> None:
        """The task ended; its videos count as done if it built its shard (uploaded or not)."""
        self.ended.add(task.index)
        self.ended_videos += len(task.entries) if built else 0
        self.show()

    def show(self, videos_done: dict[int, int] | None = None) -> None:
        """Report the count if it grew; videos_done: the tasks' latest counts (None: as before)."""
        if videos_done is not None:
            self.videos_done = videos_done
        done = self.ended_videos + sum(n for i, n in self.videos_done.items() if i not in self.ended)
        if done > self.shown:
            self.shown = done
            self.run.report(done)
