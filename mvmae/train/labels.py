"""Label-scarce training without new shards: a stratified subset of the labelled samples.

``mvmae train --label-fraction F --label-seed S`` trains on ``F`` of each class's samples (at
least one per class), drawn with seed ``S`` from the (key, label) pairs of the training shards;
the chosen keys are written to the run folder (``label_subset.json``) and the training pipeline
reads only those samples. The draw depends only on the shards' content, F and S, so runs of
different models with the same F and S see the same clips (paired comparisons).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mvmae.files import atomic_write_bytes
from mvmae.shards.sample import LABEL
from mvmae.shards.stream import ReadConfig, expand_urls, read_shards

SUBSET_FILE = "label_subset.json"


def scan_labels(urls: str | Sequence[str], read: ReadConfig | None = None) -> list[tuple[str, int]]:
    """(key, label) of every sample in the shards, in shard order (reads the tar members, decodes
    only the label)."""
    shards = ({"url": u} for u in expand_urls(urls))
    return [(raw["__key__"], int(raw[LABEL])) for raw in read_shards(shards, read or ReadConfig())]


def stratified_subset(pairs: Sequence[tuple[str, int]], fraction: float, seed: int) -> list[str]:
    """Keys of round(fraction * n_c) samples of each class c (at least 1), drawn at random with
    ``seed``; sorted. fraction 1 keeps every key."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    by_class: dict[int, list[str]] = {}
    for key, label in sorted(pairs):
        by_class.setdefault(label, []).append(key)
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for label in sorted(by_class):
        keys = by_class[label]
        n = max(1, int(np.floor(fraction * len(keys) + 0.5)))
        chosen.extend(keys[i] for i in rng.permutation(len(keys))[:n])
    return sorted(chosen)


def write_subset(folder: str | Path, keys: Sequence[str], fraction: float, seed: int,
                 num_available: int) -> Path:
    """Record the subset in the run folder (atomic)."""
    path = Path(folder) / SUBSET_FILE
    record = {"label_fraction": fraction, "label_seed": seed, "num_samples": len(keys),
              "num_available": num_available, "keys": list(keys)}
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    return path
