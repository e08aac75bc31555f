"""Videos that hung or killed an extraction worker, remembered across runs of a job.

``<split>-faults.json`` in the output folder (written atomically by the job's parent process only)
holds, per sample key, how often the video ran past the time limit and how often its worker died
while extracting it. A rerun of the job, even after ``kill -9`` of the whole job, reads it back, so
a video that hangs the decoder costs the time limit once, not once per run, and a video that
crashes the decoder is given up after ``retries + 1`` deaths in all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mvmae.shards.videolist import VideoEntry
from mvmae.shards.writer import atomic_write_json

log = logging.getLogger(__name__)

TIMEOUT, CRASHED = "timeout", "crashed"  # the failure codes of the manifest and stats files


class FaultLog:
    """Per-video worker faults of one job (``job_id``), kept in ``path``.

    A record: ``{"source", "shard", "timeouts": int, "limit_s": float, "deaths": int, "cause": str}``
    (``cause``: how the worker died the last time, e.g. "killed by SIGSEGV").
    """

    def __init__(self, path: Path, job_id: str) -> None:
        self.path, self.job_id = Path(path), job_id
        self.videos: dict[str, dict] = {}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("%s: unreadable (%s); worker faults of earlier runs are forgotten", path, exc)
                return
            if saved.get("job") == job_id:
                self.videos = saved.get("videos", {})

    def record_timeout(self, entry: VideoEntry, shard: str, limit_s: float) -> None:
        """``entry`` ran longer than ``limit_s`` seconds and its worker was killed."""
        v = self._record(entry, shard)
        v["timeouts"] += 1
        v["limit_s"] = limit_s
        self._save()

    def record_death(self, entry: VideoEntry, shard: str, cause: str) -> int:
        """The worker died while extracting ``entry``; returns how often that has happened."""
        v = self._record(entry, shard)
        v["deaths"] += 1
        v["cause"] = cause
        self._save()
        return v["deaths"]

    def excluded(self, entries: list[VideoEntry], retries: int) -> dict[str, tuple[str, str]]:
        """Videos among ``entries`` not to try again: key -> (failure code, reason)."""
        out = {}
        for e in entries:
            v = self.videos.get(e.key)
            if v is None:
                continue
            if v["timeouts"]:
                out[e.key] = (TIMEOUT, f"still extracting after {v['limit_s']:g} s (the video time "
                                       "limit): its worker was killed")
            elif v["deaths"] > retries:
                out[e.key] = (CRASHED, f"its worker died {v['deaths']} times while extracting it "
                                       f"(last: {v['cause']})")
        return out

    def _record(self, entry: VideoEntry, shard: str) -> dict:
        return self.videos.setdefault(entry.key, {"source": entry.source, "shard": shard,
                                                  "timeouts": 0, "limit_s": 0.0, "deaths": 0,
                                                  "cause": ""})

    def _save(self) -> None:
        atomic_write_json(self.path, {"job": self.job_id, "videos": self.videos})
