"""The output of every recipe: ``<split>.txt`` lists of ``path label`` lines and ``classes.json``.

Labels are integer class indices into ``classes.json`` (a JSON list of names, index -> name), so a
split that lacks a class keeps the same indices as the others (``mvmae extract run`` reads class
names by sorting them, which would shift indices). Paths are absolute, so a list works from any
working directory; ``mvmae extract run`` and ``mvmae check`` read these lists as they are.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mvmae.files import atomic_open, ensure_folder
from mvmae.shards.videolist import VIDEO_SUFFIXES


class DatasetError(ValueError):
    """A recipe cannot run at all (names the file or folder and the reason)."""


@dataclass(frozen=True)
class ListEntry:
    """One video of a split: its absolute path and class index."""

    path: Path
    label: int


@dataclass
class SplitSet:
    """The splits of one protocol (``{"train": [...], "test": [...]}``) and the class names."""

    splits: dict[str, list[ListEntry]]
    classes: list[str]
    problems: list[str] = field(default_factory=list)  # files skipped, with the reason

    def class_counts(self) -> dict[str, Counter]:
        """Videos per class index, per split."""
        return {name: Counter(e.label for e in entries) for name, entries in self.splits.items()}


def find_videos(root: Path) -> list[Path]:
    """Every file under ``root`` (recursively) with a video suffix, sorted; raises DatasetError
    when ``root`` is not a folder."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def write_list(path: Path, entries: list[ListEntry]) -> None:
    """``entries`` as ``path label`` lines in ``path``, atomically (the folder is created)."""
    ensure_folder(path.parent)
    with atomic_open(path) as fh:
        for entry in entries:
            fh.write(f"{entry.path} {entry.label}\n")


def write_classes(path: Path, classes: list[str]) -> None:
    """The class names (index -> name) as a JSON list in ``path``, atomically."""
    ensure_folder(path.parent)
    with atomic_open(path) as fh:
        fh.write(json.dumps(classes, indent=1) + "\n")


def write_lines(path: Path, lines: list[str]) -> None:
    """One line per item in ``path``, atomically (reports such as ``missing.txt``)."""
    ensure_folder(path.parent)
    with atomic_open(path) as fh:
        fh.writelines(f"{line}\n" for line in lines)


def write_split_set(folder: Path, split_set: SplitSet) -> list[Path]:
    """``folder/<split>.txt`` for each split of ``split_set``; returns the paths written."""
    written = []
    for name, entries in split_set.splits.items():
        write_list(folder / f"{name}.txt", entries)
        written.append(folder / f"{name}.txt")
    return written
