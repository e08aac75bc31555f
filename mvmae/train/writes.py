"""Failed writes into a run's output folder, reported as one error that names the file and the
reason (``ENOSPC``, ``EROFS``, ``EACCES``, ...) and says how to go on.

torch reports a failed ``torch.save`` as a ``RuntimeError`` of its zip writer ("unexpected pos
768 vs 662") whose ``__context__`` is the ``OSError`` that says why; ``writing`` finds that
``OSError`` in the chain, so the user reads "No space left on device" instead.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from mvmae.shards.writer import WriteError


class OutputWriteError(WriteError):
    """A file of the run's output folder could not be written: a :class:`WriteError` whose
    message ends with what to fix, 'then rerun with --resume'."""

    def __init__(self, path: str | Path, cause: OSError, what: str = "",
                 then: str = "rerun with --resume") -> None:
        super().__init__(path, cause, what, then)


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
    """Turn an I/O failure inside the block (a :class:`WriteError` of a write in it too) into
    ``OutputWriteError`` naming ``path`` and ``what``; other exceptions (and an
    ``OutputWriteError`` from a nested block) pass unchanged."""
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as exc:
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise OutputWriteError(path, cause, what) from exc
