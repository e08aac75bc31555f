"""A folder of class subfolders (``ROOT/<class>/<video>``) to a seeded, stratified train/val split.

Every class is split on its own, so each keeps its share in both lists: a class of n videos puts
``round(n * val_ratio)`` of them in val (at least one when n >= 2 and val_ratio > 0, never all of
them), chosen by a generator seeded with ``seed`` and the class name, so adding a class does not
reshuffle the others. Classes are the subfolder names, sorted (the order ``mvmae extract run``
gives a folder); a subfolder without videos keeps its index and is reported.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from mvmae.datasets.lists import DatasetError, ListEntry, SplitSet, find_videos

log = logging.getLogger(__name__)


def num_val(num_videos: int, val_ratio: float) -> int:
    """How many of a class's ``num_videos`` go to val (see the module docstring)."""
    if num_videos < 2 or val_ratio <= 0:
        return 0
    return min(num_videos - 1, max(1, round(num_videos * val_ratio)))


def _class_seed(seed: int, name: str) -> list[int]:
    return [seed, int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "little")]


def build_splits(root: Path, val_ratio: float = 0.2, seed: int = 0) -> SplitSet:
    """``train`` and ``val`` lists of the videos in ``root``'s class subfolders (recursively
    inside each); raises DatasetError when ``root`` has no subfolder or val_ratio is not in [0, 1)."""
    if not 0 <= val_ratio < 1:
        raise DatasetError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{root}: no class subfolders")
    splits: dict[str, list[ListEntry]] = {"train": [], "val": []}
    problems = []
    for label, name in enumerate(classes):
        videos = [v.resolve() for v in find_videos(root / name)]
        if not videos:
            problems.append(f"{root / name}: no videos")
            continue
        order = np.random.default_rng(_class_seed(seed, name)).permutation(len(videos))
        val = set(order[:num_val(len(videos), val_ratio)].tolist())
        for i, video in enumerate(videos):
            splits["val" if i in val else "train"].append(ListEntry(video, label))
    log.info(f"{len(problems)} class folder(s) of {root} without videos")
    return SplitSet(splits, classes, problems)
