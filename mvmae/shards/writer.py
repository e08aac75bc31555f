"""Writing shards atomically: a tar under a temporary name, renamed when complete."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


class ShardFile:
    """A tar shard being written. ``commit()`` makes it visible; leaving the ``with`` block
    without committing (an exception, a kill) leaves at most a hidden temporary file.

    Members get mtime 0, uid/gid 0 and mode 0644, so the same samples give the same bytes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._fh = open(self.tmp, "wb")
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
        for ext, data in sample.items():
            if ext.startswith("__"):
                continue
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1

    def commit(self) -> int:
        """Finish the tar, flush it to disk and rename it into place; returns its size in bytes."""
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._tar = None
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        try:
            self._tar.close()
            self._fh.close()
        finally:
            self._tar = None
            self.tmp.unlink(missing_ok=True)
