"""``mvmae extract run``: a resumable, partitionable batch job from videos to shards.

The plan is deterministic: the input list (in order) is cut into shards of ``shard_size`` videos,
shard ``j`` is named ``<split>-<j:06d>.tar``, and part ``i`` of ``N`` owns the shards with
``j % N == i``. A shard is complete when its tar and its stats JSON exist (both written under a
temporary name and renamed); re-running the same command skips complete shards and rewrites the
rest, so a job killed at any moment finishes with every good video exactly once.

Videos are extracted in supervised worker processes (:mod:`mvmae.job.workers`): a video that
runs past the time limit or kills its worker is recorded as failed (``timeout``, ``crashed``) in
the part's fault file (:mod:`mvmae.job.faults`) and in its shard's stats, and the job goes on.
``workers=0`` extracts in the calling process instead: no time limit, and a crash of the decoder
ends the job.

The parts of a job may run at once into one folder (shared by their machines): a part holds the
lock ``.<split>-part-<i>of<N>.lock`` while it runs (a second run of the same part is refused), and
the files every part writes (``<split>-job.json``, the manifest) are written under the short-lived
lock ``.<split>-job.lock``. A part removes only the temporary files nobody can be writing: those
of its own shards and files, and those of dead processes of its own machine.

With ``out_url`` (object storage, :mod:`mvmae.job.store`) ``out_dir`` is a local scratch folder:
each shard is built there as above, then its tar uploaded whole and its stats JSON after it (the
commit marker), and both removed from the scratch folder. A shard is complete when its marker
(of this job) is in the bucket; a shard whose upload failed past the retries stays built in the
scratch folder, is named in the summary, and is uploaded (not extracted again) by the next run.
The job record, ``classes.json`` and the manifest (listed from the markers) are single PUTs; the
fault files are kept in the scratch folder and copied into the bucket after each save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mvmae import __version__
from mvmae.extract.config import ExtractConfig
from mvmae.extract.errors import VideoError
from mvmae.extract.video import iter_segments
from mvmae.files import FileLock, LockHeld, stale_temporaries
from mvmae.job.engine import ShardRun, engine_of
from mvmae.job.faults import FaultLog
from mvmae.job.publish import (bring_faults, built_stats, completed_stats, send_faults, stats_if_complete,
                               store_of, upload_shard, write_store_manifest)
from mvmae.job.store import is_remote
from mvmae.shards.sample import FORMAT_VERSION, RECORD, encode_sample, update_record
from mvmae.shards.videolist import VideoEntry, read_inputs
from mvmae.shards.writer import (ShardFile, WriteError, atomic_write_bytes, atomic_write_json, ensure_folder,
                                remove_quietly)

log = logging.getLogger(__name__)

STORE_SCHEMES = ("s3", "gs", "gcs", "memory")  # object storage an OUT may name (fsspec)


class JobError(RuntimeError):
    """The job cannot run as asked: another job's folder, this part running already (names the path)."""


@dataclass
class JobConfig:
    """Options of one extraction job (``extract`` holds the per-video options).

    shard_size: videos per shard. part_index/num_parts: this machine's share (``--part i/N``).
    max_seconds: longer videos become several samples ``<key>_<k>`` (0: never cut).
    workers: supervised worker processes (0: extract in this process, unprotected).
    video_timeout: seconds one video may take before its worker is killed (code ``timeout``).
    retries: further tries of a video whose worker died (then code ``crashed``), and of a shard
    whose worker was lost between videos (then the shard is reported failed).
    engine: what runs the shards (:mod:`mvmae.job.engine`): "local" or "ray" (ray_address: a
    cluster to join; None starts a local instance).
    out_url: object storage the shards go to (``out_dir`` is then the local scratch folder they
    are built in); upload_retries / upload_retry_delay_s: retries of a failed PUT or GET, the
    delay before the first (doubling).
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
    video_timeout: float = 600.0
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    out_url: str | None = None
    engine: str = "local"
    ray_address: str | None = None
    upload_retries: int = 4
    upload_retry_delay_s: float = 1.0

    def __post_init__(self) -> None:
        self.input, self.out_dir = Path(self.input), Path(self.out_dir)
        if self.out_url is not None:
            scheme = self.out_url.split("://", 1)[0]
            if not is_remote(self.out_url) or scheme not in STORE_SCHEMES:
                raise ValueError(f"{self.out_url}: OUT must be a folder or an object storage URL "
                                 f"({', '.join(s + '://' for s in STORE_SCHEMES)})")
            if scheme == "memory" and (self.workers or self.engine != "local"):
                raise ValueError(f"{self.out_url}: memory:// lives in this process only: use --workers 0")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.upload_retries < 0 or self.upload_retry_delay_s < 0:
            raise ValueError("upload_retries and upload_retry_delay_s must be >= 0")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.video_timeout <= 0:
            raise ValueError(f"video_timeout must be > 0 s, got {self.video_timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
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
    warnings_by_code: dict = field(default_factory=dict)  # videos extracted with each warning code
    shards_redone: int = 0  # shard attempts started again after a lost worker (the bar went back)
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
                excluded: dict[str, tuple[str, str]] | None = None,
                on_phase: Callable[[str, int], None] | None = None) -> dict:
    """Extract the videos of one shard and write it atomically; returns its stats (also saved).

    excluded: key -> (code, reason) of videos recorded as failed without being tried (the ones
    that hung or crashed a worker before). on_phase("video", i) is called before the i-th video is
    extracted, on_phase("write", n) before the tar is committed. Raises WriteError.
    """
    out, excluded = config.out_dir, excluded or {}
    videos, num_samples, num_frames = [], 0, 0
    with ShardFile(out / f"{task.name}.tar") as shard:
        for i, entry in enumerate(task.entries):
            if entry.key in excluded:
                record, samples = _failed_record(entry, *excluded[entry.key]), []
            else:
                if on_phase is not None:
                    on_phase("video", i)
                record, samples = _extract_entry(entry, config)
            for sample in samples:
                shard.write(sample)
            num_samples += len(samples)
            num_frames += record.pop("num_frames", 0)
            videos.append({**record, "shard": task.name})
        if on_phase is not None:
            on_phase("write", len(task.entries))
        size = shard.commit()
    stats = {
        "shard": task.name, "job": job_id, "format_version": FORMAT_VERSION,
        "num_videos": len(task.entries), "num_samples": num_samples, "num_frames": num_frames,
        "bytes": size, "num_failed": sum(v["status"] == "failed" for v in videos),
        "failures_by_code": dict(Counter(v["code"] for v in videos if v["status"] == "failed")),
        "warnings_by_code": dict(Counter(c for v in videos for c in v.get("warnings", []))),
        "videos": videos,
    }
    try:
        atomic_write_json(out / f"{task.name}.json", stats)
    except WriteError:
        remove_quietly(out / f"{task.name}.tar")  # not complete without its stats
        raise
    return stats


def build_shard(task: ShardTask, config: JobConfig, job_id: str,
                excluded: dict[str, tuple[str, str]] | None = None,
                on_phase: Callable[[str, int], None] | None = None) -> dict:
    """What an engine runs per shard: :func:`write_shard`, then for a job into object storage the
    upload (:func:`publish.upload_shard`; on_phase("upload", n) before). A shard built by an
    earlier run whose upload failed is uploaded without being extracted again. Returns the stats;
    with ``"upload_error"`` added when the upload failed past its retries (the shard then stays
    in the scratch folder for the next run)."""
    store = store_of(config)
    if store is None:
        return write_shard(task, config, job_id, excluded, on_phase)
    stats = built_stats(task, config, job_id)
    if stats is not None:
        log.info("%s: built by an earlier run, uploading it", task.name)
    else:
        stats = write_shard(task, config, job_id, excluded, on_phase)
    if on_phase is not None:
        on_phase("upload", len(task.entries))
    return upload_shard(store, task, config, stats)


def _failed_record(entry: VideoEntry, code: str, reason: str) -> dict:
    return {"source": entry.source, "label": entry.label, "class_name": entry.class_name,
            "key": entry.key, "status": "failed", "code": code, "reason": reason, "keys": [], "warnings": []}


def _extract_entry(entry: VideoEntry, config: JobConfig) -> tuple[dict, list[dict]]:
    """One video -> (its manifest record, its encoded samples); failures are recorded, not raised."""
    try:
        segments, warnings = _encoded_segments(entry, config)
    except VideoError as exc:
        return _failed_record(entry, exc.code, exc.reason), []
    except Exception as exc:  # a bug or an FFmpeg failure we do not know: keep the job going
        log.exception("%s: unexpected error", entry.path)
        return _failed_record(entry, "internal", f"{type(exc).__name__}: {exc}"), []
    record = {**_failed_record(entry, "", ""), "status": "ok"}
    record["keys"] = [s["__key__"] for s, _ in segments]
    record["num_frames"] = sum(n for _, n in segments)
    record["warnings"] = warnings
    return record, [s for s, _ in segments]


def _encoded_segments(entry: VideoEntry, config: JobConfig) -> tuple[list[tuple[dict, int]], list[str]]:
    """Encoded samples of a video with their frame counts, and its warning codes (the
    ``mvmae check`` codes ``no_iframe`` and ``rotated``, as extraction found them). Only one segment's
    fields are held at a time; the (small) encoded samples are kept until the whole video has
    succeeded, then keyed ``<key>`` if it fits one sample or ``<key>_<k>`` if it was cut."""
    samples, warnings = [], set()
    for seg in iter_segments(entry.path, config.extract, max_seconds=config.max_seconds):
        warnings.update(code for code, found in (("no_iframe", seg.meta.get("context_frame")),
                                                 ("rotated", seg.meta.get("rotation"))) if found)
        extra = {"segment": {"index": len(samples), "start": seg.meta["segment_start"]}}
        sample = encode_sample(entry.key, seg, entry.label, entry.class_name, entry.source, extra)
        samples.append((sample, seg.num_frames))
    n = len(samples)
    return [
        (update_record(s, key=f"{entry.key}_{k}" if n > 1 else entry.key,
                       segment={"index": k, "start": json.loads(s[RECORD])["segment"]["start"],
                                "num_segments": n}), frames)
        for k, (s, frames) in enumerate(samples)
    ], sorted(warnings)


def run_job(config: JobConfig, progress: Callable[[int, int], None] | None = None) -> JobSummary:
    """Run (or resume) the job; ``progress(done_videos, total_videos)`` is called as videos finish.

    Raises JobError when the output folder belongs to a different job or this part of the job
    is running there already, and WriteError when the output cannot be written (a full disk, a
    read-only or unwritable folder): the message names the path and the reason; complete shards
    are kept, no partial one is left, and running the same job again once the cause is gone
    finishes it. With ``workers >= 1`` the workers are spawned processes: a script that calls
    this at import time needs the usual ``if __name__ == "__main__":`` guard.
    """
    try:
        ensure_folder(config.out_dir)
        with _part_lock(config):
            return _run(config, progress)
    except WriteError as exc:
        raise WriteError(exc.filename, exc, exc.what,
                         then="run the same command again (complete shards are kept)") from exc


def _part_lock(config: JobConfig) -> FileLock:
    """This part's lock, held for the run; JobError when another process holds it."""
    path = config.out_dir / f".{config.split}-part-{config.part_index}of{config.num_parts}.lock"
    try:
        return FileLock(path)
    except LockHeld as exc:
        raise JobError(f"{config.out_dir}: part {config.part_index}/{config.num_parts} of this job "
                       f"is running there already ({exc.holder}); wait for it to end or stop it") from None


def _run(config: JobConfig, progress: Callable[[int, int], None] | None) -> JobSummary:
    t0 = time.monotonic()
    entries, classes = read_inputs(config.input)
    out = config.out_dir
    job_id = fingerprint(entries, config)
    _claim_folder(config, job_id, classes)
    tasks = [t for t in plan_shards(entries, config) if t.index % config.num_parts == config.part_index]
    summary = JobSummary(num_shards=len(tasks))
    todo = [t for t in tasks if not _complete(t, config, job_id)]
    summary.shards_skipped = len(tasks) - len(todo)
    total = sum(len(t.entries) for t in tasks)
    done = total - sum(len(t.entries) for t in todo)
    store = store_of(config)
    if store is not None:
        bring_faults(store, out, config.split, job_id)
    faults = FaultLog(out, config.split, job_id, config.part_index, config.num_parts)
    if store is not None:
        send_faults(store, faults)
    _remove_stale_temporaries(out, tasks, faults)
    if progress:
        progress(done, total)
    run = ShardRun(config, job_id, faults, lambda n: progress and progress(n, total), done, build_shard)
    failed = engine_of(config).run(todo, run)
    summary.shards_redone = run.num_redone
    summary.shards_written = len(todo) - len(failed)
    summary.shards_failed = [t.name for t in failed]
    for stats in completed_stats(tasks, config, job_id):
        if stats is not None:
            summary.num_videos += stats["num_videos"]
            summary.num_failed += stats["num_failed"]
            summary.num_samples += stats["num_samples"]
            summary.bytes += stats["bytes"]
            for code, n in stats["failures_by_code"].items():
                summary.failures_by_code[code] = summary.failures_by_code.get(code, 0) + n
            for code, n in stats.get("warnings_by_code", {}).items():
                summary.warnings_by_code[code] = summary.warnings_by_code.get(code, 0) + n
    summary.num_ok = summary.num_videos - summary.num_failed
    if store is None:
        write_manifest(out, config.split)
    else:
        write_store_manifest(store, config.split)
    summary.seconds = time.monotonic() - t0
    return summary


def _remove_stale_temporaries(out: Path, tasks: list[ShardTask], faults: FaultLog) -> None:
    """Temporary files left by killed runs: those of this part's shards and fault file (whoever
    wrote them: the part's lock says no one else writes those), and any that a dead process of
    this machine left. Those another machine may be writing stay."""
    own = {f"{t.name}.{ext}" for t in tasks for ext in ("tar", "json")} | {faults.path.name}
    for tmp in stale_temporaries(out, claimed=own.__contains__):
        remove_quietly(tmp)  # on a read-only folder the job's first write reports it


def _job_lock(out: Path, split: str) -> FileLock:
    """The lock of the files every part of the job writes (held for a moment, waited for)."""
    return FileLock(out / f".{split}-job.lock", wait=True)


def _claim_folder(config: JobConfig, job_id: str, classes: list[str]) -> None:
    """Record the job in OUT_DIR, refusing a folder that holds shards of another job."""
    out = config.out_dir
    job_path = out / f"{config.split}-job.json"
    job = {"job": job_id, "mvmae_version": __version__, "format_version": FORMAT_VERSION,
           "input": str(config.input), "split": config.split, "shard_size": config.shard_size,
           "max_seconds": config.max_seconds, "num_parts": config.num_parts,
           "extract": asdict(config.extract)}
    store = store_of(config)
    if store is not None:  # no lock in a bucket: parts write the same record, whichever is last
        previous = store.read_json(job_path.name)
        if previous is not None and previous.get("job") != job_id:
            raise JobError(f"{store.url}: holds '{config.split}' shards of a different job (other inputs, "
                           f"shard size or extraction options); use another URL or --split")
        store.put_json(job_path.name, job)
        store.put_json("classes.json", classes)
        return
    with _job_lock(out, config.split):
        if job_path.exists():
            previous = json.loads(job_path.read_text())
            if previous.get("job") != job_id:
                raise JobError(
                    f"{out}: holds '{config.split}' shards of a different job (other inputs, shard "
                    f"size or extraction options); use another folder or --split"
                )
        _remove_claimed_temporaries(out, job_path.name)
        atomic_write_json(job_path, job)
    atomic_write_json(out / "classes.json", classes)


def _complete(task: ShardTask, config: JobConfig, job_id: str) -> bool:
    store = store_of(config)
    if store is not None:  # the marker is uploaded after its tar: trusted, the tar not listed
        return stats_if_complete(task, job_id, store.read_json(f"{task.name}.json")) is not None
    stats_path = config.out_dir / f"{task.name}.json"
    if not (config.out_dir / f"{task.name}.tar").exists() or not stats_path.exists():
        return False
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stats.get("job") == job_id and stats.get("num_videos") == len(task.entries)


def write_manifest(out_dir: Path, split: str) -> Path:
    """``<split>-manifest.jsonl``: every video of every complete shard in the folder, in order.
    Listed and written under the job's lock, so that of parts finishing at once the last to
    write lists every shard completed before it."""
    path = out_dir / f"{split}-manifest.jsonl"
    with _job_lock(out_dir, split):
        lines = []
        for stats_path in sorted(out_dir.glob(f"{split}-[0-9]*.json")):
            if (out_dir / f"{stats_path.stem}.tar").exists():
                lines.extend(json.dumps(v, sort_keys=True) for v in json.loads(stats_path.read_text())["videos"])
        _remove_claimed_temporaries(out_dir, path.name)
        atomic_write_bytes(path, ("\n".join(lines) + "\n" if lines else "").encode())
    return path


def _remove_claimed_temporaries(out_dir: Path, name: str) -> None:
    """Under the job's lock: the temporary files of ``name``, a file only written under it, are
    stale (and, as anywhere, those of dead processes of this machine)."""
    for tmp in stale_temporaries(out_dir, claimed=lambda target: target == name):
        remove_quietly(tmp)
