"""What an extraction job's output folder holds, read back for tests: the samples of its visible
shards, their sample counts, and its manifest (tests/job/test_job.py and the extraction fault
tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mvmae.shards.stream import ShardReader

# Tars already read whole, by (path, inode, size, mtime): the watchers of running jobs poll every
# few ms, and reading every visible shard again on each poll took most of a core from the job
# they watch. A shard appears under its name by an atomic rename; any other version is read again.
_complete: dict[tuple, int] = {}


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def count_samples(tar: Path) -> int:
    """Samples in ``tar``, read whole once per version of the file (ShardError when it is
    partial or damaged, FileNotFoundError when it is gone)."""
    before = _identity(tar)
    if before in _complete:
        return _complete[before]
    num_samples = sum(1 for _ in ShardReader(str(tar)))
    if _identity(tar) == before:  # not replaced while it was read
        _complete[before] = num_samples
    return num_samples


def read_samples(out: Path, split: str = "train") -> dict[str, dict]:
    """Every sample of the folder's visible ``split`` shards: key -> {member: bytes}."""
    samples = {}
    for tar in sorted(out.glob(f"{split}-*.tar")):
        for s in ShardReader(str(tar)):
            assert s["__key__"] not in samples, f"{s['__key__']} twice"
            samples[s["__key__"]] = {k: v for k, v in s.items() if not k.startswith("__")}
    return samples


def read_manifest(out: Path, split: str = "train") -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}-manifest.jsonl").read_text().splitlines()]
