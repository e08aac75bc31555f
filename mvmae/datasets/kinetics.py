"""Kinetics (400/600/700): splits from the annotation CSVs and a folder of downloaded clips.

The CSVs published with the dataset have the header ``label,youtube_id,time_start,time_end,split``
(Kinetics-700-2020 adds ``is_cc``; the test CSV has no ``label``), and the usual downloaders name a
clip ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``. Clips are found anywhere under ROOT by
that name (any video suffix), so ``ROOT/train/<label>/...`` and a flat folder both work. Many
YouTube videos have gone since the lists were published: a row without its file is counted and
listed, never fatal. Classes are the labels of all the CSVs given, sorted (the dataset's order).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from mvmae.datasets.lists import DatasetError, ListEntry, SplitSet, find_videos

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end", "split")


def clip_name(youtube_id: str, time_start: str, time_end: str) -> str:
    """The downloaded clip's file stem: ``{youtube_id}_{start:06d}_{end:06d}`` (seconds)."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of one annotation CSV; raises DatasetError naming the file when it is unreadable
    or lacks a required column."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{csv_path}: not a Kinetics annotation CSV: no column "
                                   f"{', '.join(missing)} (header {reader.fieldnames})")
            return list(reader)
    except OSError as exc:
        raise DatasetError(f"{csv_path}: {exc.strerror or exc}") from exc


def build_splits(csv_paths: list[Path], root: Path) -> tuple[SplitSet, list[str]]:
    """One list per ``split`` value of the CSVs (``train``, ``val``/``validate``, ...), labels
    indexing the sorted label names; and the clips not found under ``root`` (``"split: stem"``).
    Rows without a label (the test CSV) are skipped and reported as problems."""
    rows = [(path, row) for path in csv_paths for row in read_rows(path)]
    classes = sorted({row["label"] for _, row in rows if row.get("label")})
    if not classes:
        raise DatasetError(f"{', '.join(map(str, csv_paths))}: no labelled row")
    index = {name: i for i, name in enumerate(classes)}
    by_stem: dict[str, Path] = {}
    for video in find_videos(root):
        by_stem.setdefault(video.stem, video.resolve())
    splits: dict[str, list[ListEntry]] = {}
    missing, problems = [], []
    for csv_path, row in rows:
        try:
            stem = clip_name(row["youtube_id"], row["time_start"], row["time_end"])
        except (TypeError, ValueError):
            problems.append(f"{csv_path}: row {row}: time_start/time_end are not numbers")
            continue
        if not row.get("label"):
            problems.append(f"{csv_path}: {stem}: no label (a test CSV?)")
            continue
        entries = splits.setdefault(row["split"], [])
        if stem in by_stem:
            entries.append(ListEntry(by_stem[stem], index[row["label"]]))
        else:
            missing.append(f"{row['split']}: {stem}")
    log.info(f"{len(missing)} clip(s) listed but not found under {root}")
    return SplitSet(splits, classes, problems), missing
