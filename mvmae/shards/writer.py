"""Writing shards atomically: a tar under a temporary name, renamed when complete.

Every failure to write (a full disk, a read-only or unwritable folder, a file-size limit) comes out
as one :class:`WriteError` naming the final path and the reason, with the temporary file removed.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


class WriteError(Exception):
    """An output file cannot be written: ``<path>: cannot write: <reason> (<ERRNO>)``.

    ``errno`` is the operating system's error number (ENOSPC, EROFS, EACCES, EFBIG, ...).
    """

    def __init__(self, path: str | Path, exc: OSError) -> None:
        self.path, self.errno = str(path), exc.errno
        self.reason = exc.strerror or str(exc) or type(exc).__name__
        name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        super().__init__(f"{path}: cannot write: {self.reason}" + (f" ({name})" if name else ""))


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``.<name>.XXXXXXXX.tmp``) for writing; on a clean
    exit it is fsynced and renamed to ``path``, on an error removed (``path`` untouched) and the
    error re-raised. For files whose writer wants a stream (``torch.save``, csv, matplotlib)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other users
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_path(path: Path) -> Path:
    """The hidden temporary name ``.<name>.tmp-<pid>`` a file is written under, in its folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def ensure_folder(path: Path) -> None:
    """Create ``path`` (and parents) or raise a :class:`WriteError` saying why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    finally:
        remove_quietly(tmp)


def atomic_write_json(path: Path, obj) -> None:
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
            self._fh = open(self.tmp, "wb")
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


def remove_quietly(path: Path) -> None:
    """Delete ``path`` if it is there and the folder lets us."""
    try:
        path.unlink(missing_ok=True)
    except OSError:  # the folder became unreadable or read-only: nothing more can be done here
        pass
