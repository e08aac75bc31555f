"""Dataset inputs: a ``path label`` list file or a folder of class subfolders.

The list-file format is the one of VideoMAE, VideoMS and MV-MAE's ``train_split.txt``: one video per
line, the path then the label separated by whitespace (the label is the last field, so paths may
contain spaces), ``#`` comments and blank lines ignored. A label is an integer class index or a
class name. Relative paths are relative to the list file's folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".ts", ".webm", ".h264", ".264")


class VideoListError(ValueError):
    """The input list or folder cannot be used (names the file and line)."""


@dataclass(frozen=True)
class VideoEntry:
    """One input video: as listed (``source``), resolved ``path``, class index and name, key."""

    source: str
    path: Path
    label: int
    class_name: str
    key: str


def read_inputs(input_path: str | Path) -> tuple[list[VideoEntry], list[str]]:
    """Entries in input order and the class list (index -> name) from a list file or folder."""
    p = Path(input_path)
    if p.is_dir():
        rows = _scan_folder(p)
    elif p.is_file():
        rows = _parse_list(p)
    else:
        raise VideoListError(f"{p}: no such list file or folder")
    if not rows:
        raise VideoListError(f"{p}: no videos listed")
    try:
        classes, labels = _classes(rows)
    except VideoListError as exc:
        raise VideoListError(f"{p}: {exc}") from None
    keys = _keys([source for source, _, _ in rows])
    entries = [
        VideoEntry(source=source, path=path, label=label, class_name=classes[label], key=key)
        for (source, path, _), label, key in zip(rows, labels, keys)
    ]
    return entries, classes


def _parse_list(path: Path) -> list[tuple[str, Path, str]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise VideoListError(f"{path}:{lineno}: expected 'path label', got {line!r}")
        source, label = parts
        video = Path(source) if Path(source).is_absolute() else path.parent / source
        rows.append((source, video, label))
    return rows


def _scan_folder(root: Path) -> list[tuple[str, Path, str]]:
    rows = []
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        for video in sorted(class_dir.rglob("*")):
            if video.suffix.lower() in VIDEO_SUFFIXES and video.is_file():
                rows.append((str(video.relative_to(root)), video, class_dir.name))
    return rows


def _classes(rows: list[tuple[str, Path, str]]) -> tuple[list[str], list[int]]:
    """Integer labels are class indices (names are the numbers); names are sorted into indices."""
    raw = [label for _, _, label in rows]
    if all(re.fullmatch(r"\d+", label) for label in raw):
        labels = [int(label) for label in raw]
        return [str(i) for i in range(max(labels) + 1)], labels
    if any(re.fullmatch(r"\d+", label) for label in raw):
        raise VideoListError("labels mix class indices and class names; use one or the other")
    classes = sorted(set(raw))
    index = {name: i for i, name in enumerate(classes)}
    return classes, [index[label] for label in raw]


def _keys(sources: list[str]) -> list[str]:
    """Sample keys: sanitized stems, disambiguated by a hash of the listed path when shared."""
    stems = [re.sub(r"[^A-Za-z0-9_-]", "_", Path(s).stem) or "video" for s in sources]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    keys = [
        f"{stem}_{hashlib.sha1(src.encode()).hexdigest()[:8]}" if counts[stem] > 1 else stem
        for stem, src in zip(stems, sources)
    ]
    seen: set[str] = set()
    for i, key in enumerate(keys):  # the same path listed twice: number the repeats
        if key in seen:
            keys[i] = f"{key}_dup{i}"
        seen.add(keys[i])
    return keys
