"""The supervision of extraction workers (``mvmae.job.workers``), made to hit its races on purpose.

The shard "writers" here are small functions of this module run in real spawned workers, talking
to the real supervising parent through real pipes; they stand for ``job.write_shard`` so that a
test decides exactly when each progress message is sent.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from mvmae.job.faults import FaultLog
from mvmae.job.job import JobConfig, ShardTask
from mvmae.shards.videolist import VideoEntry
from mvmae.job.workers import WorkerPool

WAIT_S = 120  # a bound on every wait for another process (never reached when things work)


def _entries(n: int, prefix: str, path_len: int = 10) -> list[VideoEntry]:
    return [VideoEntry(f"{prefix}{i}.mp4", Path(f"/data/{'x' * path_len}/{prefix}{i}.mp4"), 0, "c",
                       f"{prefix}{i}") for i in range(n)]


def _wait_file(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def _handshake_shard(task: ShardTask, config: JobConfig, job_id: str, excluded, on_phase) -> dict:
    """Shard 'a' says it is on its video 5 once the parent has seen shard 'b' on its video 0;
    'b' moves to video 1 on the signal 'go' and finishes on 'go2' (flag files in out_dir)."""
    flags = config.out_dir
    if task.name == "a":
        _wait_file(flags / "b_seen")
        on_phase("video", 5)
    else:
        on_phase("video", 0)
        _wait_file(flags / "go")
        on_phase("video", 1)
        _wait_file(flags / "go2")
        on_phase("write", len(task.entries))
    return {}


def test_a_late_progress_message_is_read_before_a_kill(tmp_path) -> None:
    """The parent is held up (here by its progress callback) past shard b's time limit while b
    moves on to its next video: the message saying so is waiting in the pipe when the limit is
    checked. It must be read first: no video is blamed, no worker killed. (It was blamed on
    the video b had just started, recorded 'timeout' and never tried again.)"""
    config = JobConfig(input=tmp_path / "list.txt", out_dir=tmp_path, workers=2, video_timeout=4.0)
    faults = FaultLog(tmp_path, "train", "job")
    tasks = [ShardTask(0, "a", _entries(6, "a")), ShardTask(1, "b", _entries(3, "b"))]
    stalled = []

    def report(n: int) -> None:
        if n == 0:  # b is on its video 0 and the parent knows it
            (tmp_path / "b_seen").touch()
        elif n == 5 and not stalled:  # a's message: hold the parent up past b's limit
            stalled.append(True)
            (tmp_path / "go").touch()
            b = next(w for w in pool.supervisor.workers if w.item is not None and w.item.name == "b")
            deadline = time.monotonic() + WAIT_S
            while not b.conn.poll():  # b's "video 1" is in the pipe, not read yet
                assert time.monotonic() < deadline, "b never moved on"
                time.sleep(0.005)
            time.sleep(config.video_timeout + 0.2)
        elif n == 7:  # b's "video 1" was read
            (tmp_path / "go2").touch()

    pool = WorkerPool(_handshake_shard, config, "job", faults, report, 0)
    assert pool.run(tasks) == []
    assert stalled and faults.videos == {}


class _DiesWhenUnpickled:
    """Stands for write_shard: unpickling it in the spawned worker ends that process before it
    reads its first task, as a worker that cannot start does (a failing import, no memory)."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_worker_that_dies_at_start_up_costs_its_shard_a_try(tmp_path) -> None:
    """A task larger than the pipe's buffer (a shard of 12000 videos, 0.8 MB): sending it to a
    worker that dies at start-up fails (EPIPE). That must count as a lost worker, so the shard is
    given up after retries + 1 of them instead of workers being started for ever."""
    config = JobConfig(input=tmp_path / "list.txt", out_dir=tmp_path, workers=1, retries=1)
    task = ShardTask(0, "train-000000", _entries(12000, "v", path_len=60))
    faults = FaultLog(tmp_path, "train", "job")
    pool = WorkerPool(_DiesWhenUnpickled(), config, "job", faults, lambda n: None, 0)
    result: list = []
    runner = threading.Thread(target=lambda: result.append(pool.run([task])), daemon=True)
    runner.start()
    runner.join(WAIT_S)
    assert not runner.is_alive(), "workers that die at start-up are replaced for ever"
    assert result == [[task]] and pool.attempts[task.index] == config.retries + 1
