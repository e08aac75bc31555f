"""Videos that hung or killed an extraction worker, remembered across runs of a job.

``<split>-faults.json`` in the output folder (``<split>-faults-<i>of<N>.json`` for part ``i/N``
of a job run with ``--part``; written atomically by the part's parent process only) holds, per
sample key, how often the video ran past the time limit and how often its worker died while
extracting it. A rerun of the job, even after ``kill -9`` of the whole job, reads it back, so a
video that hangs the decoder costs the time limit once, not once per run, and a video that
crashes the decoder is given up after ``retries + 1`` deaths in all. Each part writes its own
file, so parts running at once in one folder do not overwrite each other's records; every part
reads all of them (a rerun with another ``N`` finds the records of the earlier parts).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from mvmae.shards.videolist import VideoEntry
from mvmae.shards.writer import atomic_write_json

log = logging.getLogger(__name__)

TIMEOUT, CRASHED = "timeout", "crashed"  # the failure codes of the manifest and stats files


def fault_file_name(split: str, part_index: int = 0, num_parts: int = 1) -> str:
    """The fault file of part ``part_index`` of ``num_parts``: 'train-faults.json' for a job in
    one part, 'train-faults-2of4.json' for part 2/4."""
    return f"{split}-faults.json" if num_parts == 1 else f"{split}-faults-{part_index}of{num_parts}.json"


class FaultLog:
    """Per-video worker faults of one job (``job_id``) in ``out_dir``: part ``part_index`` of
    ``num_parts`` keeps its own in ``path`` (:func:`fault_file_name`), and reads every part's
    file of ``split`` for :meth:`excluded`.

    A record: ``{"source", "shard", "timeouts": int, "limit_s": float, "deaths": int, "cause": str}``
    (``cause``: how the worker died the last time, e.g. "killed by SIGSEGV").
    """

    on_save = None  # called with the path after each save (a job into object storage uploads it)

    def __init__(self, out_dir: Path, split: str, job_id: str, part_index: int = 0,
                 num_parts: int = 1) -> None:
        self.path, self.job_id = Path(out_dir) / fault_file_name(split, part_index, num_parts), job_id
        self.videos: dict[str, dict] = {}  # every part's records; a key seen twice: the later one
        self._own: set[str] = set()  # the keys this part's file holds
        pattern = re.compile(rf"{re.escape(split)}-faults(-\d+of\d+)?\.json")
        try:
            names = sorted(n for n in os.listdir(self.path.parent) if pattern.fullmatch(n))
        except OSError:  # no folder yet: no faults yet
            names = []
        for name in names:
            videos = self._read(self.path.parent / name)
            if name == self.path.name:
                self._own.update(videos)
            for key, v in videos.items():
                if key not in self.videos or _count(v) > _count(self.videos[key]):
                    self.videos[key] = v

    @classmethod
    def detached(cls, job_id: str, videos: dict[str, dict]) -> "FaultLog":
        """A log of ``videos`` (key -> record) kept in memory only: what a shard's run on another
        machine (a Ray task) records, handed back to the driver, whose log :meth:`merge`s it."""
        log_ = cls.__new__(cls)
        log_.path, log_.job_id, log_.videos, log_._own = None, job_id, dict(videos), set()
        return log_

    def records(self, keys) -> dict[str, dict]:
        """The records of ``keys`` (those it has)."""
        return {k: self.videos[k] for k in keys if k in self.videos}

    def merge(self, videos: dict[str, dict]) -> None:
        """Take in records made elsewhere (a detached log's), the further along of two kept; saved."""
        changed = False
        for key, v in videos.items():
            if key not in self.videos or _count(v) > _count(self.videos[key]):
                self.videos[key] = v
                self._own.add(key)
                changed = True
        if changed:
            self._save()

    def _read(self, path: Path) -> dict[str, dict]:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); worker faults of earlier runs are forgotten", path, exc)
            return {}
        return saved.get("videos", {}) if saved.get("job") == self.job_id else {}

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
        self._own.add(entry.key)
        return self.videos.setdefault(entry.key, {"source": entry.source, "shard": shard,
                                                  "timeouts": 0, "limit_s": 0.0, "deaths": 0,
                                                  "cause": ""})

    def _save(self) -> None:
        if self.path is None:  # detached: the driver saves what it merges
            return
        atomic_write_json(self.path, {"job": self.job_id,
                                      "videos": {k: self.videos[k] for k in sorted(self._own)}})
        if self.on_save is not None:
            self.on_save(self.path)


def merge_records(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
    """Two sets of records of one job (key -> record), the further along of each video's kept."""
    out = dict(a)
    for key, v in b.items():
        if key not in out or _count(v) > _count(out[key]):
            out[key] = v
    return out


def _count(record: dict) -> tuple[int, int]:
    """How far a video's record has got: counts only grow, so of two records of one video (a
    rerun with another number of parts) the one with more is the later."""
    return record["timeouts"], record["deaths"]
