"""``mvmae extract run``: a resumable, partitionable batch job from videos to shards.

The plan is deterministic: the input list (in order) is cut into shards of ``shard_size`` videos,
shard ``j`` is named ``<split>-<j:06d>.tar``, and part ``i`` of ``N`` owns the shards with
``j % N == i``. A shard is complete when its tar and its stats JSON exist (both written under a
temporary name and renamed); re-running the same command skips complete shards and rewrites the
rest, so a job killed at any moment finishes with every good video exactly once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mvmae import __version__
from mvmae.extract.decoder import ExtractConfig
from mvmae.extract.errors import VideoError
from mvmae.extract.video import iter_segments
from mvmae.shards.sample import FORMAT_VERSION, RECORD, encode_sample, update_record
from mvmae.shards.videolist import VideoEntry, read_inputs
from mvmae.shards.writer import ShardFile, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """The job cannot run as asked (names the folder or file and the reason)."""


@dataclass
class JobConfig:
    """Options of one extraction job (``extract`` holds the per-video options).

    shard_size: videos per shard. part_index/num_parts: this machine's share (``--part i/N``).
    max_seconds: longer videos become several samples ``<key>_<k>`` (0: never cut).
    retries: how often the worker pool is restarted after a worker dies.
    """

    input: Path
    out_dir: Path
    split: str = "train"
    shard_size: int = 64
    workers: int = 1
    part_index: int = 0
    num_parts: int = 1
    max_seconds: float = 30.0
    retries: int = 2
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def __post_init__(self) -> None:
        self.input, self.out_dir = Path(self.input), Path(self.out_dir)
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.part_index < self.num_parts:
            raise ValueError(f"part must be i/N with 0 <= i < N, got {self.part_index}/{self.num_parts}")
        if self.max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0, got {self.max_seconds}")
        if not self.split or "/" in self.split or "." in self.split:
            raise ValueError(f"split must be a plain name, got {self.split!r}")


@dataclass
class ShardTask:
    index: int
    name: str
    entries: list[VideoEntry]


@dataclass
class JobSummary:
    """What this run of the job did, over this part's shards."""

    num_videos: int = 0
    num_ok: int = 0
    num_failed: int = 0
    failures_by_code: dict = field(default_factory=dict)
    num_shards: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    shards_failed: list = field(default_factory=list)
    num_samples: int = 0
    bytes: int = 0
    seconds: float = 0.0


def plan_shards(entries: list[VideoEntry], config: JobConfig) -> list[ShardTask]:
    """All shards of the dataset (every part), in order."""
    size = config.shard_size
    return [
        ShardTask(j, f"{config.split}-{j:06d}", entries[j * size:(j + 1) * size])
        for j in range((len(entries) + size - 1) // size)
    ]


def fingerprint(entries: list[VideoEntry], config: JobConfig) -> str:
    """Identity of what the shards contain: inputs, shard size, extraction options."""
    h = hashlib.sha1()
    for e in entries:
        h.update(f"{e.source}\t{e.label}\t{e.key}\n".encode())
    h.update(json.dumps([config.shard_size, config.max_seconds, config.split,
                         asdict(config.extract), FORMAT_VERSION]).encode())
    return h.hexdigest()[:16]


def write_shard(task: ShardTask, config: JobConfig, job_id: str,
                on_video: Callable[[], None] | None = None) -> dict:
    """Extract the videos of one shard and write it atomically; returns its stats (also saved)."""
    out = config.out_dir
    videos, num_samples, num_frames = [], 0, 0
    with ShardFile(out / f"{task.name}.tar") as shard:
        for entry in task.entries:
            record, samples = _extract_entry(entry, config)
            for sample in samples:
                shard.write(sample)
            num_samples += len(samples)
            num_frames += record.pop("num_frames", 0)
            videos.append({**record, "shard": task.name})
            if on_video is not None:
                on_video()
        size = shard.commit()
    stats = {
        "shard": task.name, "job": job_id, "format_version": FORMAT_VERSION,
        "num_videos": len(task.entries), "num_samples": num_samples, "num_frames": num_frames,
        "bytes": size, "num_failed": sum(v["status"] == "failed" for v in videos),
        "failures_by_code": dict(Counter(v["code"] for v in videos if v["status"] == "failed")),
        "videos": videos,
    }
    atomic_write_json(out / f"{task.name}.json", stats)
    return stats


def _extract_entry(entry: VideoEntry, config: JobConfig) -> tuple[dict, list[dict]]:
    """One video -> (its manifest record, its encoded samples); failures are recorded, not raised."""
    record = {"source": entry.source, "label": entry.label, "class_name": entry.class_name,
              "key": entry.key, "status": "ok", "code": "", "reason": "", "keys": []}
    try:
        segments = list(_encoded_segments(entry, config))
    except VideoError as exc:
        return {**record, "status": "failed", "code": exc.code, "reason": exc.reason}, []
    except Exception as exc:  # a bug or an FFmpeg failure we do not know: keep the job going
        log.exception("%s: unexpected error", entry.path)
        return {**record, "status": "failed", "code": "internal",
                "reason": f"{type(exc).__name__}: {exc}"}, []
    record["keys"] = [s["__key__"] for s, _ in segments]
    record["num_frames"] = sum(n for _, n in segments)
    return record, [s for s, _ in segments]


def _encoded_segments(entry: VideoEntry, config: JobConfig) -> list[tuple[dict, int]]:
    """Encoded samples of a video with their frame counts. Only one segment's fields are held
    at a time; the (small) encoded samples are kept until the whole video has succeeded, then
    keyed ``<key>`` if it fits one sample or ``<key>_<k>`` if it was cut."""
    samples = []
    for seg in iter_segments(entry.path, config.extract, max_seconds=config.max_seconds):
        extra = {"segment": {"index": len(samples), "start": seg.meta["segment_start"]}}
        sample = encode_sample(entry.key, seg, entry.label, entry.class_name, entry.source, extra)
        samples.append((sample, seg.num_frames))
    n = len(samples)
    return [
        (update_record(s, key=f"{entry.key}_{k}" if n > 1 else entry.key,
                       segment={"index": k, "start": json.loads(s[RECORD])["segment"]["start"],
                                "num_segments": n}), frames)
        for k, (s, frames) in enumerate(samples)
    ]


def run_job(config: JobConfig, progress: Callable[[int, int], None] | None = None) -> JobSummary:
    """Run (or resume) the job; ``progress(done_videos, total_videos)`` is called as videos finish.

    Raises JobError when the output folder belongs to a different job.
    """
    t0 = time.monotonic()
    entries, classes = read_inputs(config.input)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    job_id = fingerprint(entries, config)
    _claim_folder(config, job_id, classes)
    tasks = [t for t in plan_shards(entries, config) if t.index % config.num_parts == config.part_index]
    summary = JobSummary(num_shards=len(tasks))
    todo = [t for t in tasks if not _complete(t, config, job_id)]
    summary.shards_skipped = len(tasks) - len(todo)
    total = sum(len(t.entries) for t in tasks)
    done = total - sum(len(t.entries) for t in todo)
    for t in todo:  # temporary files of an interrupted run
        for stale in out.glob(f".{t.name}.*.tmp-*"):
            stale.unlink(missing_ok=True)
    if progress:
        progress(done, total)
    failed = _run_tasks(todo, config, job_id, lambda n: progress and progress(n, total), done)
    summary.shards_written = len(todo) - len(failed)
    summary.shards_failed = [t.name for t in failed]
    for t in tasks:
        stats_path = out / f"{t.name}.json"
        if stats_path.exists():
            stats = json.loads(stats_path.read_text())
            summary.num_videos += stats["num_videos"]
            summary.num_failed += stats["num_failed"]
            summary.num_samples += stats["num_samples"]
            summary.bytes += stats["bytes"]
            for code, n in stats["failures_by_code"].items():
                summary.failures_by_code[code] = summary.failures_by_code.get(code, 0) + n
    summary.num_ok = summary.num_videos - summary.num_failed
    write_manifest(out, config.split)
    summary.seconds = time.monotonic() - t0
    return summary


def _claim_folder(config: JobConfig, job_id: str, classes: list[str]) -> None:
    """Record the job in OUT_DIR, refusing a folder that holds shards of another job."""
    out = config.out_dir
    job_path = out / f"{config.split}-job.json"
    if job_path.exists():
        previous = json.loads(job_path.read_text())
        if previous.get("job") != job_id:
            raise JobError(
                f"{out}: holds '{config.split}' shards of a different job (other inputs, shard size "
                f"or extraction options); use another folder or --split"
            )
    job = {"job": job_id, "mvmae_version": __version__, "format_version": FORMAT_VERSION,
           "input": str(config.input), "split": config.split, "shard_size": config.shard_size,
           "max_seconds": config.max_seconds, "num_parts": config.num_parts,
           "extract": asdict(config.extract)}
    atomic_write_json(job_path, job)
    atomic_write_json(out / "classes.json", classes)


def _complete(task: ShardTask, config: JobConfig, job_id: str) -> bool:
    stats_path = config.out_dir / f"{task.name}.json"
    if not (config.out_dir / f"{task.name}.tar").exists() or not stats_path.exists():
        return False
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stats.get("job") == job_id and stats.get("num_videos") == len(task.entries)


def _run_tasks(todo: list[ShardTask], config: JobConfig, job_id: str,
               report: Callable[[int], None], done: int) -> list[ShardTask]:
    """Write the shards of ``todo``; returns those still failing after the retries."""
    if config.workers == 1:
        counter = [done]

        def tick() -> None:
            counter[0] += 1
            report(counter[0])

        for task in todo:
            write_shard(task, config, job_id, tick)
        return []
    remaining = list(todo)
    for attempt in range(config.retries + 1 if remaining else 0):
        remaining, done = _run_pool(remaining, config, job_id, report, done)
        if not remaining:
            return []
        log.warning("a worker died; %d shard(s) to retry (attempt %d of %d)",
                    len(remaining), attempt + 1, config.retries + 1)
    return remaining


def _run_pool(tasks: list[ShardTask], config: JobConfig, job_id: str,
              report: Callable[[int], None], done: int) -> tuple[list[ShardTask], int]:
    """One pool's go at ``tasks``: (tasks not finished because the pool broke, videos done)."""
    unfinished = []
    # spawn, not fork: a forked worker inherits PyAV objects of the parent whose FFmpeg threads it
    # lacks, and hangs for ever when the garbage collector frees them (sws_freeContext joins them).
    with ProcessPoolExecutor(max_workers=min(config.workers, len(tasks)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(write_shard, t, config, job_id): t for t in tasks}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    fut.result()
                    done += len(futures[fut].entries)
                    report(done)
                except BrokenProcessPool:
                    unfinished.append(futures[fut])
    return unfinished, done


def write_manifest(out_dir: Path, split: str) -> Path:
    """``<split>-manifest.jsonl``: every video of every complete shard in the folder, in order."""
    lines = []
    for stats_path in sorted(out_dir.glob(f"{split}-[0-9]*.json")):
        if (out_dir / f"{stats_path.stem}.tar").exists():
            lines.extend(json.dumps(v, sort_keys=True) for v in json.loads(stats_path.read_text())["videos"])
    path = out_dir / f"{split}-manifest.jsonl"
    atomic_write_bytes(path, ("\n".join(lines) + "\n" if lines else "").encode())
    return path
