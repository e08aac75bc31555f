"""Writing shards atomically: a tar under a temporary name, renamed when complete.

Built on :mod:`mvmae.files` (atomic writes, temporary names, :class:`WriteError`), whose names
this module passes on to the later stages. Every failure to write a shard or a JSON file (a full
disk, a read-only or unwritable folder, a file-size limit) comes out as one :class:`WriteError`
naming the final path and the reason, with the temporary file removed.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from mvmae.files import (WriteError, atomic_open, atomic_write_bytes, ensure_folder, remove_quietly,
                         stale_temporaries, temporary_path)

__all__ = ["ShardFile", "WriteError", "atomic_open", "atomic_write_bytes", "atomic_write_json",
           "ensure_folder", "remove_quietly", "stale_temporaries", "temporary_path"]


def atomic_write_json(path: Path, obj) -> None:
    """``obj`` as indented, key-sorted JSON in ``path``, atomically; raises :class:`WriteError`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


class ShardFile:
    """A tar shard being written. ``commit()`` makes it visible; leaving the ``with`` block
    without committing (an exception, a kill) leaves at most a hidden temporary file (none
    unless the process was killed: the next run of the job removes those).

    Members get mtime 0, uid/gid 0 and mode 0644, so the same samples give the same bytes.
    Raises :class:`WriteError` (temporary file removed) when the folder or disk refuses a write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = temporary_path(self.path)
        try:
            self._fh = open(self.tmp, "xb")
        except OSError as exc:
            raise WriteError(self.path, exc) from exc
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)
        self.num_samples = 0

    def __enter__(self) -> "ShardFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tar is not None:
            self.abort()

    def write(self, sample: dict) -> None:
        """Add one sample: {'__key__': key, extension: bytes, ...}."""
        key = sample["__key__"]
        try:
            for ext, data in sample.items():
                if ext.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                self._tar.addfile(info, io.BytesIO(data))
        except OSError as exc:
            self.abort()
            raise WriteError(self.path, exc) from exc
        self.num_samples += 1

    def commit(self) -> int:
        """Finish the tar, flush it to disk and rename it into place; returns its size in bytes."""
        try:
            self._tar.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise WriteError(self.path, exc) from exc
        self._tar = None
        return self.path.stat().st_size

    def abort(self) -> None:
        """Drop the temporary file (a flush that fails on a full disk is ignored: the file goes)."""
        self._tar = None
        try:
            self._fh.close()
        except OSError:
            pass
        remove_quietly(self.tmp)

