"""A job's shards in object storage (:mod:`mvmae.job.store`): the upload of a shard built in
the scratch folder, the commit markers read back, the manifest listed from them.

A shard's tar is uploaded whole, then its stats JSON (the commit marker); both are then removed
from the scratch folder. A marker of this job whose ``num_videos`` is the shard's is trusted (the
tar is never listed). The manifest is one PUT of the videos of every marker, in order. The fault
files live in the scratch folder and, copied after each save, in the bucket, where a run on
another machine finds them (:func:`bring_faults`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mvmae.files import remove_quietly
from mvmae.job.faults import FaultLog, merge_records
from mvmae.job.store import Store, StoreError
from mvmae.shards.writer import atomic_write_json

if TYPE_CHECKING:
    from mvmae.job.job import JobConfig, ShardTask

log = logging.getLogger(__name__)


def store_of(config: JobConfig) -> Store | None:
    """The job's object storage (None: a local job)."""
    if config.out_url is None:
        return None
    return Store(config.out_url, config.upload_retries, config.upload_retry_delay_s)


def built_stats(task: ShardTask, config: JobConfig, job_id: str) -> dict | None:
    """The stats of the task's shard if it lies complete in the scratch folder (built by an
    earlier run whose upload failed), else None."""
    if not (config.out_dir / f"{task.name}.tar").exists():
        return None
    return stats_if_complete(task, job_id, _read_local_json(config.out_dir / f"{task.name}.json"))


def upload_shard(store: Store, task: ShardTask, config: JobConfig, stats: dict) -> dict:
    """Upload the shard's tar, then its stats (the commit marker), from the scratch folder, and
    remove them there; returns the stats, with ``"upload_error"`` when the upload failed past
    its retries (the files are then kept for the next run)."""
    tar, marker = config.out_dir / f"{task.name}.tar", config.out_dir / f"{task.name}.json"
    try:
        store.upload(tar, tar.name)
        store.upload(marker, marker.name)  # after the tar: the commit marker
    except StoreError as exc:
        log.error("%s: upload failed, the shard is kept in %s for the next run: %s", task.name, config.out_dir, exc)
        return {**stats, "upload_error": str(exc)}
    remove_quietly(tar)
    remove_quietly(marker)
    return stats


def _read_local_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stats_if_complete(task: ShardTask, job_id: str, stats: dict | None) -> dict | None:
    """The stats, if they are this job's complete record of the task's shard."""
    if isinstance(stats, dict) and stats.get("job") == job_id and stats.get("num_videos") == len(task.entries):
        return stats
    return None


def completed_stats(tasks: list[ShardTask], config: JobConfig, job_id: str) -> list[dict | None]:
    """The stats of each task's shard as the output holds them (None: not complete there)."""
    store = store_of(config)
    if store is None:
        paths = [config.out_dir / f"{t.name}.json" for t in tasks]
        return [json.loads(p.read_text()) if p.exists() else None for p in paths]
    return [stats_if_complete(t, job_id, store.read_json(f"{t.name}.json")) for t in tasks]


def write_store_manifest(store: Store, split: str) -> str:
    """``<split>-manifest.jsonl`` in object storage: every video of every shard whose commit
    marker is there, in order (one PUT). Returns its URL. Parts finishing at once each write
    it: run ``mvmae shards manifest URL`` after the last, or rerun a part, to be sure it lists all."""
    lines = []
    for name in store.names(f"{split}-[0-9]*.json"):
        stats = store.read_json(name)
        if isinstance(stats, dict):
            lines.extend(json.dumps(v, sort_keys=True) for v in stats.get("videos", []))
    name = f"{split}-manifest.jsonl"
    store.put_bytes(name, ("\n".join(lines) + "\n" if lines else "").encode())
    return store.url_of(name)


def bring_faults(store: Store, scratch: Path, split: str, job_id: str) -> None:
    """Before the job's :class:`FaultLog` is read: every part's fault file of this job in the
    bucket merged into the scratch folder's copy (of two records of a video, the further along)."""
    for name in store.names(f"{split}-faults*.json"):
        remote = store.read_json(name)
        if not isinstance(remote, dict) or remote.get("job") != job_id:
            continue
        local = _read_local_json(scratch / name)
        videos = local["videos"] if isinstance(local, dict) and local.get("job") == job_id else {}
        atomic_write_json(scratch / name, {"job": job_id, "videos": merge_records(videos, remote.get("videos", {}))})


def send_faults(store: Store, faults: FaultLog) -> None:
    """Have every later save of the fault file uploaded too (a failed upload only warned about:
    the scratch copy holds the records, and the next save sends them)."""
    def upload(path: Path) -> None:
        try:
            store.upload(path, path.name)
        except StoreError as exc:
            log.warning("fault records not uploaded (kept in %s): %s", path, exc)
    faults.on_save = upload
