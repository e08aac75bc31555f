"""A training run's output folder, from its first read to the end of the run: one object that
both trainers use (``RunFolder``), and the lock that keeps a second run out of it.

The life of a run in its folder:

1. ``RunFolder(...)`` reads and checks (every rank): ``resume.load_resume_state`` (the config, the
   inputs). Then the main rank locks the folder (``lock_folder``). Nothing else is written.
2. The trainer sets up (counts the steps of an epoch, loads the checkpoint's weights) inside
   ``with folder.setting_up():``, which releases the folder when anything fails there.
3. ``start(steps_per_epoch)`` checks the steps per epoch against the checkpoint, then writes: it
   tidies the folder (``resume.prepare_folder``), opens the ``MetricLogger`` and saves the resolved
   ``config.yaml``.
4. ``with folder.training():`` frames the training loop: the logger is closed and the lock
   released however it ends; on success every rank then waits for rank 0's last checkpoint and
   leaves the process group.

A trainer that is built but never run releases the folder with ``close()``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping

from mvmae.train import checkpoint as ckpt
from mvmae.train.config import save_resolved_config
from mvmae.train.distributed import DistInfo, barrier, cleanup
from mvmae.train.logs import MetricLogger
from mvmae.train.resume import (
    LOCK_NAME, ResumeError, check_steps_per_epoch, load_resume_state, prepare_folder)
from mvmae.train.writes import writing

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"

# The folder locks this process holds, by the lock file's (device, inode). POSIX record locks
# belong to the process: locking a file this process has locked already succeeds, and closing any
# descriptor of it releases the lock, so a second lock in the same process is refused here,
# before the file is opened again.
_HELD: "weakref.WeakValueDictionary[tuple[int, int], FolderLock]" = weakref.WeakValueDictionary()


class FolderLock:
    """An exclusive POSIX record lock (``fcntl.lockf``) on ``out_dir/.lock``, which holds the
    holder's pid. A record lock is the process's own: a forked child (a DataLoader worker) does
    not hold it, and the process's death releases it, so a killed run leaves no stale lock."""

    def __init__(self, path: Path, file) -> None:
        self.path, self._file = path, file
        st = os.fstat(file.fileno())
        self._key = (st.st_dev, st.st_ino)
        _HELD[self._key] = self

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if _HELD.get(self._key) is self:
            del _HELD[self._key]
        self._file.close()


def _held_here(path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    lock = _HELD.get((st.st_dev, st.st_ino))
    return lock is not None and not lock.closed


def lock_folder(out_dir: Path) -> FolderLock | None:
    """Create ``out_dir`` and lock it for this process until the returned lock is closed (or the
    process dies); None (with a warning) where the filesystem cannot lock. Raises ``ResumeError``
    when another process holds the lock, or a run of this process does (a trainer not closed):
    two runs writing one folder would interleave checkpoints and records."""
    path = out_dir / LOCK_NAME
    with writing(out_dir, "output folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        if _held_here(path):
            raise ResumeError(f"{out_dir}: a run of this process is writing there already; close it "
                              f"first (its trainer's close()), or choose another --out")
        fh = open(path, "a+", encoding="utf-8")
    try:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            log.warning(f"{path}: cannot lock ({exc.strerror}); make sure no other run writes in {out_dir}")
            return None
        raise ResumeError(f"{out_dir}: another run (pid {holder}) is writing there; stop it first, "
                          f"or choose another --out") from exc
    lock = FolderLock(path, fh)
    try:
        with writing(path, "lock file"):
            fh.truncate(0)
            fh.write(f"{os.getpid()}\n")
            fh.flush()
    except BaseException:
        lock.close()
        raise
    return lock


class RunFolder:
    """The output folder of ``manager`` for one run of config dataclass ``cfg`` (with its
    ``resume`` flag), on the process ``dist``: built, it has read and checked the checkpoint to
    continue (``state``, None for a fresh start; ``inputs``: what the run trains with, compared
    with the checkpoint's record of them) and, on the main rank, locked the folder. See the
    module docstring for the order of the rest."""

    def __init__(self, manager: ckpt.CheckpointManager, cfg: Any, dist: DistInfo,
                 inputs: Mapping[str, Any] | None = None) -> None:
        self.manager, self.cfg, self.dist = manager, cfg, dist
        self.state = load_resume_state(manager, cfg.resume, cfg, dist.device, inputs)
        self.logger: MetricLogger | None = None
        self._lock = lock_folder(manager.out_dir) if dist.is_main else None
        self._done = False

    @property
    def out_dir(self) -> Path:
        return self.manager.out_dir

    @contextlib.contextmanager
    def setting_up(self) -> Iterator[None]:
        """The trainer's set-up after the lock: a failure there releases the folder."""
        try:
            yield
        except BaseException as exc:
            self.close(exc)
            raise

    def start(self, steps_per_epoch: int) -> MetricLogger:
        """The last step of set-up, the first that writes: refuse a checkpoint whose epochs had
        another number of steps, tidy the folder for ``state``, open the metric logger (TensorBoard
        hides an interrupted run's events after the checkpoint's step) and save ``config.yaml``."""
        state, is_main = self.state, self.dist.is_main
        if state is not None:
            check_steps_per_epoch(state, steps_per_epoch, self.manager.last_path)
        if is_main:
            prepare_folder(self.manager, state)
        self.logger = MetricLogger(self.out_dir, is_main=is_main,
                                   purge_step=state[ckpt.STEP] + 1 if state is not None else 0)
        if is_main:
            path = self.out_dir / CONFIG_NAME
            with writing(path, "resolved config"):
                save_resolved_config(self.cfg, path)
        return self.logger

    @contextlib.contextmanager
    def training(self) -> Iterator[MetricLogger]:
        """Frame of the training loop (once per folder): yields the logger; closes it and
        releases the folder however the loop ends."""
        if self.logger is None or self._done:
            raise RuntimeError(f"{self.out_dir}: this run has ended or never started; build a new trainer")
        self._done = True
        try:
            yield self.logger
        except BaseException as exc:
            self.close(exc)
            raise
        self.close()
        # Leave the process group only once rank 0 has written its last checkpoint: a rank that
        # exits with the group alive can abort in the gloo teardown ("terminate called without an
        # active exception"), and torchrun then kills rank 0, possibly mid-save.
        barrier()
        cleanup()

    def close(self, error: BaseException | None = None) -> None:
        """Close the logger (a failure to flush metrics.jsonl raises, unless ``error``, the one
        already on its way out, is given: then it is logged) and release the lock. Idempotent."""
        logger, self.logger = self.logger, None
        try:
            if logger is not None:
                logger.__exit__(type(error) if error is not None else None, error, None)
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.close()
