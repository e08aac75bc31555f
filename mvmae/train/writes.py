"""Failed writes into a run's output folder, reported as one error that names the file and the
reason (``ENOSPC``, ``EROFS``, ``EACCES``, ...) and says how to go on.

torch reports a failed ``torch.save`` as a ``RuntimeError`` of its zip writer ("unexpected pos
768 vs 662") whose ``__context__`` is the ``OSError`` that says why; ``writing`` finds that
``OSError`` in the chain, so the user reads "No space left on device" instead.
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

_HINTS = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
          errno.EFBIG: "raise the file-size limit (ulimit -f)", errno.EROFS: "make the folder writable",
          errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable"}


class OutputWriteError(OSError):
    """A file of the run's output folder could not be written. ``errno`` is the cause's,
    ``filename`` the file the run was writing (its final name, not the temporary one)."""

    def __init__(self, path: str | Path, what: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.what = what

    @property
    def reason(self) -> str:
        """The cause in words and by errno name: 'No space left on device (ENOSPC)'."""
        if not self.errno:
            return str(self.strerror)
        return f"{self.strerror} ({errno.errorcode.get(self.errno, self.errno)})"

    def __str__(self) -> str:
        hint = _HINTS.get(self.errno, "fix the cause")
        return f"cannot write {self.what} {self.filename}: {self.reason}; {hint}, then rerun with --resume"


def os_error_in(exc: BaseException) -> OSError | None:
    """``exc`` itself when it is an ``OSError``, else the first one in its cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def writing(path: str | Path, what: str) -> Iterator[None]:
    """Turn an I/O failure inside the block into ``OutputWriteError(path, what)``; other
    exceptions (and an ``OutputWriteError`` from a nested block) pass unchanged."""
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as exc:
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise OutputWriteError(path, what, cause) from exc
