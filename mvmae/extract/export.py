"""The export schema: one video's fields in one ``.npz`` file.

Written by ``mvmae extract video`` (and, later, ``mvmae shards export``, which adds ``source`` and
``label``). Arrays, in this order of importance:

=============  ===========================  ===============================================
key            dtype [shape]                meaning
=============  ===========================  ===============================================
mv             float32 [T, 2, h, w]         (dx, dy) px per frame (see README, MV contract)
valid          bool [T, h, w]               False: no vector (intra block, I-frame, lost)
frame_types    uint8 [T]                    ASCII ``I``/``P``/``B`` per display frame
iframes        uint8 [K, H', W', 3]         decoded I-frames, RGB, resized (short side); the
                                            context frame where none decodes (meta context_frame)
iframe_index   int64 [K]                    display index of each I-frame
grid           int64 []                     cell size px; h = ceil(H / grid)
fps            float64 []                   frames per second
size           int64 [2]                    source (H, W) px, upright (meta rotation applied)
meta           str []                       JSON: method, codec, frames lost, warnings, ...
=============  ===========================  ===============================================
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from mvmae.extract.video import VideoFields
from mvmae.files import atomic_open, ensure_folder

SCHEMA_KEYS = ("mv", "valid", "frame_types", "iframes", "iframe_index", "grid", "fps", "size", "meta")


def save_export(path: str | Path, fields: VideoFields, extra: dict | None = None) -> Path:
    """Write ``fields`` (plus ``extra`` arrays, e.g. source and label) atomically to ``path``;
    raises :class:`mvmae.files.WriteError` naming ``path`` when it cannot be written."""
    path = Path(path)
    arrays = {
        "mv": fields.mv,
        "valid": fields.valid,
        "frame_types": fields.frame_types,
        "iframes": fields.iframes,
        "iframe_index": fields.iframe_index,
        "grid": np.int64(fields.grid),
        "fps": np.float64(fields.fps),
        "size": np.asarray(fields.size, np.int64),
        "meta": np.str_(json.dumps(fields.meta, sort_keys=True)),
    }
    for key, value in (extra or {}).items():
        arrays[key] = np.asarray(value)
    ensure_folder(path.parent)
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_export(path: str | Path) -> VideoFields:
    """Read an export-schema ``.npz`` back into :class:`VideoFields` (extra keys go to meta)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not an mvmae export (.npz unreadable: {exc})") from exc
    with archive as z:
        missing = [k for k in SCHEMA_KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path}: not an mvmae export (missing {', '.join(missing)})")
        meta = json.loads(str(z["meta"]))
        meta.update({k: z[k].tolist() for k in z.files if k not in SCHEMA_KEYS})
        return VideoFields(
            mv=z["mv"],
            valid=z["valid"],
            frame_types=z["frame_types"],
            iframes=z["iframes"],
            iframe_index=z["iframe_index"],
            grid=int(z["grid"]),
            fps=float(z["fps"]),
            size=tuple(int(v) for v in z["size"]),
            meta=meta,
        )
