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

# zlib level of the .npz members. Level 1 writes a 30 s 640x360 clip's export (30 MB of arrays) in
# about half the time of numpy's savez_compressed (level 6) for a file about 5% larger (4.5 against
# 4.3 MB; stored uncompressed it would be 30 MB): benchmarks/RESULTS.md, "Start-up".
NPZ_COMPRESSLEVEL = 1


def write_npz(file, **arrays) -> None:
    """Write ``arrays`` to the open binary ``file`` as an ``.npz`` (what ``np.savez_compressed``
    writes: one deflated ``<key>.npy`` member per array, read back by ``np.load``), at zlib level
    :data:`NPZ_COMPRESSLEVEL` instead of numpy's fixed default."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=NPZ_COMPRESSLEVEL,
                         allowZip64=True) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


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
        write_npz(fh, **arrays)
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
