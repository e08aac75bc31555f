"""Fake dataset trees: copies of one real H.264 clip under the names a dataset's files have."""

from __future__ import annotations

import shutil
from pathlib import Path


def place(clip: Path, path: Path) -> Path:
    """A copy of the real clip ``clip`` at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip, path)
    return path
