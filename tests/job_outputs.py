"""What an extraction job's output folder holds, read back for tests: the samples of its visible
shards and its manifest (tests/shards/test_job.py and the extraction fault tests)."""

from __future__ import annotations

import json
from pathlib import Path

from mvmae.shards.stream import ShardReader


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
