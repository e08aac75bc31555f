"""Training checkpoints: atomic writes, ``last`` / ``best`` / rolling ``epoch_NNNN`` files, RNG state.

A checkpoint is a dict keyed by the constants below (never string literals elsewhere), saved with
``torch.save`` and loaded with ``weights_only=True``: it may hold tensors, state dicts, numbers,
strings and plain containers only (configs as ``dataclasses.asdict``). RNG states are stored in
that form by ``capture_rng_state``. A failed write raises ``writes.OutputWriteError`` naming the
file and the reason, and leaves the previous checkpoint and no temporary file.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mvmae.shards.writer import atomic_open, remove_quietly, temporary_path
from mvmae.train.writes import writing

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

# State keys.
MODEL = "model"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
EPOCH = "epoch"
STEP = "step"
BEST_METRIC = "best_metric"
RNG = "rng"
CONFIG = "config"
PHASE = "phase"
TRAINABLE = "trainable"
VERSION = "version"
EXTRA = "extra"
STEPS_PER_EPOCH = "steps_per_epoch"

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint cannot be read: missing, corrupt, or of an unsupported version (names the file)."""


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (plus ``VERSION``) to ``path`` atomically: a temporary file in the same
    folder, fsync, then ``os.replace``. On any error the temporary file is removed and the error
    re-raised (an I/O failure as ``OutputWriteError`` naming ``path``), so ``path`` holds either
    the old or the new checkpoint, never a partial one."""
    path = Path(path)
    with writing(path, "checkpoint"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            torch.save({**state, VERSION: CHECKPOINT_VERSION}, fh)
    _fsync_dir(path.parent)
    return path


def _atomic_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` atomically; a hard link when the filesystem allows (free,
    and safe because checkpoint files are only ever replaced, never modified in place)."""
    with writing(dst, "checkpoint"):
        tmp = temporary_path(dst)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here: copy the bytes
            with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 24)
            return
        try:
            os.replace(tmp, dst)
        finally:
            remove_quietly(tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    weights_only: bool = True) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; raises ``CheckpointError`` naming the
    file when it is missing, unreadable, not a checkpoint dict, or of an unknown version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        # Its first line: torch's unpickling errors go on for paragraphs (weights_only advice).
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {reason})") from exc
    if not isinstance(state, dict) or VERSION not in state:
        raise CheckpointError(f"{path}: not an mvmae checkpoint (no '{VERSION}' key)")
    if state[VERSION] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state[VERSION]!r} is not supported "
                              f"(this mvmae reads version {CHECKPOINT_VERSION})")
    return state


class CheckpointManager:
    """Writes ``last.pt`` every save, ``epoch_NNNN.pt`` keeping the latest ``keep_last_n``
    (0: none), and ``best.pt`` whenever ``metrics[best_metric]`` improves (``mode`` 'max' or
    'min'). Call it on the main rank only. The best value so far travels in the checkpoint
    under ``BEST_METRIC``; ``restore(state)`` picks it up when resuming."""

    def __init__(self, out_dir: str | Path, keep_last_n: int = 3, best_metric: str = "macro_f1",
                 mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if keep_last_n < 0:
            raise ValueError(f"keep_last_n must be >= 0, got {keep_last_n}")
        self.out_dir = Path(out_dir)
        self.keep_last_n = keep_last_n
        self.best_metric = best_metric
        self.mode = mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST_NAME

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_NAME

    def epoch_path(self, epoch: int) -> Path:
        return self.out_dir / f"epoch_{epoch:04d}.pt"

    def epoch_files(self) -> list[Path]:
        """The rolling epoch files on disk, oldest first."""
        if not self.out_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.out_dir.iterdir()
                 if (m := _EPOCH_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def is_improvement(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume best tracking from a loaded checkpoint's ``BEST_METRIC`` entry."""
        best = state.get(BEST_METRIC)
        if best and best.get("name") == self.best_metric and best.get("mode") == self.mode:
            self.best_value, self.best_epoch = best["value"], best["epoch"]

    def _best_entry(self) -> dict[str, Any] | None:
        if self.best_value is None:
            return None
        return {"name": self.best_metric, "mode": self.mode, "value": self.best_value,
                "epoch": self.best_epoch}

    def save(self, state: Mapping[str, Any], epoch: int,
             metrics: Mapping[str, float] | None = None) -> dict[str, Path]:
        """Save ``state`` for ``epoch``; ``metrics`` (e.g. validation results) decide ``best``.
        Returns the files written by role ('last', 'epoch', 'best')."""
        is_best = False
        if metrics is not None:
            if self.best_metric not in metrics:
                raise KeyError(f"best metric {self.best_metric!r} not among the metrics "
                               f"{sorted(metrics)}")
            value = float(metrics[self.best_metric])
            is_best = self.is_improvement(value)
            if is_best:
                self.best_value, self.best_epoch = value, epoch
        state = {**state, EPOCH: epoch, BEST_METRIC: self._best_entry()}
        written = {"last": save_checkpoint(self.last_path, state)}
        if self.keep_last_n:
            _atomic_copy(self.last_path, self.epoch_path(epoch))
            written["epoch"] = self.epoch_path(epoch)
            self._rotate()
        if is_best:
            _atomic_copy(self.last_path, self.best_path)
            written["best"] = self.best_path
            log.info(f"new best {self.best_metric} {self.best_value:.4f} at epoch {epoch}")
        return written

    def complete(self, state: Mapping[str, Any]) -> list[Path]:
        """Redo the copies of the save that wrote ``state`` (as read back from ``last.pt``, after
        ``restore``): a kill between replacing ``last.pt`` and copying it leaves that epoch's
        ``epoch_NNNN.pt`` missing, or ``best.pt`` one improvement behind. Idempotent; returns
        the files written."""
        epoch, written = state[EPOCH], []
        if self.keep_last_n and not self.epoch_path(epoch).exists():
            _atomic_copy(self.last_path, self.epoch_path(epoch))
            written.append(self.epoch_path(epoch))
        if self.best_epoch == epoch:  # last.pt is that best checkpoint: best.pt must be it too
            _atomic_copy(self.last_path, self.best_path)
            written.append(self.best_path)
        self._rotate()
        return written

    def _rotate(self) -> None:
        files = self.epoch_files()
        for old in files[:max(0, len(files) - self.keep_last_n)]:
            with writing(old, "checkpoint"):
                old.unlink(missing_ok=True)


def capture_rng_state() -> dict[str, Any]:
    """The state of python ``random``, numpy's global RNG, torch CPU (and every CUDA device when
    available), in a form ``torch.load(weights_only=True)`` accepts."""
    algorithm, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"algorithm": algorithm, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``capture_rng_state`` captured (CUDA only when both sides have it)."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["algorithm"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuples(value: Any) -> Any:
    # random.setstate needs tuples; a state that went through YAML/JSON may come back as lists.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
