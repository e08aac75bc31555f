"""Output files written atomically, the temporary files of writes cut short, and file locks.

Every stage writes through here (it imports no stage, so ``extract/`` may use it too). A file is
written under a hidden temporary name in its own folder, ``.<name>.tmp-<host>-<pid>-<tag>``
(:func:`temporary_path`), fsynced and renamed onto ``<name>``: a reader sees the old file or the
new one, never part of one. The name carries its writer (host name and process id, ``tag``
random), so that in a folder shared by several machines (the parts of one job on NFS) a run can
tell a temporary file that a dead process of its own machine left (stale: removed) from one that a
process elsewhere is still writing (left alone): :func:`stale_temporaries`.

A failed write comes out as one :class:`WriteError` naming the final path and the reason, with
the temporary file removed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

log = logging.getLogger(__name__)

# What to do about a failed write, by errno (the rest: "fix the cause").
_ACTIONS = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
            errno.EFBIG: "raise the file-size limit (ulimit -f)", errno.EROFS: "make the folder writable",
            errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable"}


def os_reason(exc: BaseException) -> str:
    """An OS error in words, without the ``[Errno N]`` prefix: 'No space left on device'."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def errno_name(number: int) -> str:
    """'ENOSPC' for 28; 'errno 1234' for a number this system has no name for."""
    return errno.errorcode.get(number, f"errno {number}")


class WriteError(OSError):
    """A file cannot be written: ``cannot write [<what> ]<path>: <reason>[; <action>, then <then>]``.

    ``errno`` and ``filename`` (also ``path``: the final name, not the temporary one) as in any
    ``OSError``; ``strerror`` the cause in words, ``reason`` the same with the errno's name
    ('No space left on device (ENOSPC)'). ``what`` names the kind of file ('checkpoint'),
    ``then`` how to go on once the cause is fixed ('rerun with --resume'): with it, the message
    says what to fix first (free space, make the folder writable, ...).
    """

    def __init__(self, path: str | Path, cause: OSError, what: str = "", then: str = "") -> None:
        super().__init__(cause.errno, os_reason(cause), str(path))
        self.what, self.then = what, then

    @property
    def path(self) -> str:
        return self.filename

    @property
    def reason(self) -> str:
        """The cause in words and by errno name: 'No space left on device (ENOSPC)'. Words that
        end with the name already (a reason passed on as the cause's words, as a worker process
        reports its error to the job) are not named twice."""
        if not self.errno:
            return self.strerror
        suffix = f" ({errno_name(self.errno)})"
        return self.strerror if self.strerror.endswith(suffix) else self.strerror + suffix

    def __str__(self) -> str:
        what = f"{self.what} " if self.what else ""
        text = f"cannot write {what}{self.filename}: {self.reason}"
        if self.then:
            text += f"; {_ACTIONS.get(self.errno, 'fix the cause')}, then {self.then}"
        return text

    def __reduce__(self):  # OSError's would call __init__ with (errno, strerror)
        return type(self), (self.filename, OSError(self.errno, self.strerror), self.what, self.then)


def ensure_folder(path: Path) -> None:
    """Create ``path`` (and parents) or raise a :class:`WriteError` saying why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from exc


# --------------------------------------------------------------------------- temporary files


def _host() -> str:
    """This machine's name as temporary and lock files carry it (no '/' or odd characters)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "localhost"


def temporary_path(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` to write it under: ``.<name>.tmp-<host>-<pid>-<tag>``
    (``tag``: 8 random hex digits, so two writes of one file in one process do not meet)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


_TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")
# Written by mvmae 0.1.0 and earlier, without the host: ``.<name>.tmp-<pid>`` (shards, JSON
# files), ``.<name>.<pid>.tmp`` (checkpoint copies), ``.<name>.<8 random characters>.tmp``
# (mkstemp: checkpoints, reports).
_OLD_TEMPORARY = re.compile(r"\.(?P<target>.+)\.(tmp-\d+|[A-Za-z0-9_]+\.tmp)")


@dataclass(frozen=True)
class Temporary:
    """A temporary file of an atomic write: its path, the final name it was to get, and the
    host and process that wrote it (None for the old names, which do not say)."""

    path: Path
    target: str
    host: str | None
    pid: int | None


def parse_temporary(path: Path) -> Temporary | None:
    """What ``path``'s name says about its write; None when it is no temporary file's name."""
    if match := _TEMPORARY.fullmatch(path.name):
        return Temporary(path, match["target"], match["host"], int(match["pid"]))
    if match := _OLD_TEMPORARY.fullmatch(path.name):
        return Temporary(path, match["target"], None, None)
    return None


def stale_temporaries(folder: Path, claimed: Callable[[str], bool] = lambda name: False,
                      pid: int | None = None) -> list[Path]:
    """The temporary files in ``folder`` that nobody is writing any more, to remove.

    Those a process of this machine left that has exited (with ``pid``: only that process's,
    which the caller knows has exited), and, whoever wrote them, those of the final names that
    ``claimed(name)`` accepts: names only the caller may write (it holds their lock), so their
    temporary files are left by a killed run. A temporary file written on another machine for a
    name not claimed may be in use there and is kept.
    """
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # gone or unreadable: nothing to tidy here, the next write says why
        return []
    here, stale = _host(), []
    for name in names:
        tmp = parse_temporary(Path(folder) / name)
        if tmp is None:
            continue
        if pid is not None:
            gone = tmp.host == here and tmp.pid == pid
        else:
            gone = claimed(tmp.target) or (tmp.host == here and not _process_exists(tmp.pid))
        if gone:
            stale.append(tmp.path)
    return stale


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, another user's
        return True
    return True


def remove_quietly(path: Path) -> None:
    """Delete ``path`` if it is there and the folder lets us."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:  # the folder became unreadable or read-only: nothing more can be done here
        pass


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a fresh :func:`temporary_path` beside ``path`` for writing (``mode`` "w" or "wb"; text
    as UTF-8, newlines untranslated); on a clean exit it is fsynced and renamed to ``path``. On an
    error it is removed (``path`` untouched): an ``OSError`` (inside the block too: it happened
    while writing ``path``) comes out as :class:`WriteError`, anything else as it was."""
    path = Path(path)
    tmp = temporary_path(path)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        fh = open(tmp, mode.replace("w", "x"), **text)  # "x": a name nobody else holds
    except OSError as exc:
        raise WriteError(path, exc) from exc
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except WriteError:  # of a file written inside the block: about that file, not this one
        remove_quietly(tmp)
        raise
    except OSError as exc:
        remove_quietly(tmp)
        raise WriteError(path, exc) from exc
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`); raises :class:`WriteError`."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


# --------------------------------------------------------------------------- locks


class LockHeld(Exception):
    """Another process holds the lock ``path``; ``holder`` is what it wrote there ('pid 812 on node07')."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: held by {holder}")
        self.path, self.holder = path, holder


class FileLock:
    """An exclusive ``flock`` on ``path``, taken when made (the file created, 'pid <pid> on <host>'
    written in it) and given up by ``release()`` or at the end of a ``with`` block (the file
    removed); a killed holder's lock goes with its process. Raises :class:`LockHeld` when another
    process (or another ``FileLock`` of this one) holds it, unless ``wait``; where the filesystem
    cannot lock, warns and holds nothing."""

    def __init__(self, path: str | Path, wait: bool = False) -> None:
        self.path = Path(path)
        self._fh = _acquire(self.path, wait)

    def release(self) -> None:
        if self._fh is not None:
            remove_quietly(self.path)  # while still holding it: a waiter then finds its file gone
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _acquire(path: Path, wait: bool) -> IO | None:
    while True:
        try:
            fh = open(path, "a+", encoding="utf-8")
        except OSError as exc:
            raise WriteError(path, exc) from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(path, holder) from None
            log.warning("%s: cannot lock (%s); make sure no other process writes the same files",
                        path, os_reason(exc))
            return None
        if _same_file(fh, path):
            break
        fh.close()  # its holder removed it while we waited for it: lock the one there now
    try:
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} on {_host()}\n")
        fh.flush()
    except OSError as exc:
        fh.close()
        raise WriteError(path, exc) from exc
    return fh


def _same_file(fh: IO, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
