"""Training metrics: one JSONL file, TensorBoard scalars and a console line per record.

``metrics.jsonl`` holds one JSON object per line: ``step``, ``epoch``, ``phase``, ``split``,
``time`` (unix seconds) and the metrics by name; non-finite values are written as ``null`` so
every line is strict JSON. TensorBoard tags are ``<split>/<metric>`` at ``step``. Only the main
rank writes anything. A failed write of ``metrics.jsonl`` (full disk, read-only folder) raises
``writes.OutputWriteError`` naming the file; TensorBoard is only a mirror, so when its events
cannot be written the logger warns and goes on without it. A resumed run first cuts the file
back to the records of its checkpoint (``truncate_records``): nothing duplicated, nothing torn.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from mvmae.shards.writer import atomic_write_bytes
from mvmae.train.writes import OutputWriteError, writing

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "epoch", "phase", "split", "time")


def _is_main_rank() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _open_tensorboard(log_dir: Path, purge_step: int | None):
    """A SummaryWriter, or None with a warning when TensorBoard cannot be imported.
    ``purge_step``: TensorBoard hides the events of earlier files at steps >= it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning(f"TensorBoard unavailable ({exc}); logging metrics to {METRICS_FILE} only")
        return None
    _quiet_tensorboard_writer_threads()
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _quiet_tensorboard_writer_threads() -> None:
    """Keep the traceback of TensorBoard's writer thread off the console when a write fails (a
    full disk): the thread hands the error to the writer's next call, where ``MetricLogger``
    turns it into one warning, then re-raises it, and Python would print it in the middle of the
    run's output (and of its one-line error)."""
    previous = threading.excepthook
    if getattr(previous, "mvmae_quiet_tensorboard", False):
        return

    def hook(args) -> None:
        thread = type(args.thread)
        if thread.__module__.startswith("tensorboard.") and isinstance(args.exc_value, OSError):
            log.debug(f"TensorBoard's writer thread stopped: {args.exc_value!r}")
            return
        previous(args)

    hook.mvmae_quiet_tensorboard = True
    threading.excepthook = hook


def _is_kept(line: bytes, last_epoch: int | None) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # torn by a kill mid-write, or not JSON at all
        return False
    if not isinstance(record, dict) or last_epoch is None:
        return False
    return record.get("epoch") is None or record["epoch"] <= last_epoch


def truncate_records(path: str | Path, last_epoch: int | None) -> int:
    """Cut a ``metrics.jsonl`` back to its complete records of epochs up to ``last_epoch``
    (None: no record), for a run that continues after that epoch's checkpoint (or starts
    afresh): the later epochs are about to be written again, and a line torn by a kill would
    run into the next record. Kept lines stay byte for byte; the file is rewritten atomically,
    only when something goes. Returns the number of lines dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    lines = [line for line in data.split(b"\n") if line.strip()]
    kept = [line for line in lines if _is_kept(line, last_epoch)]
    text = b"".join(line + b"\n" for line in kept)
    if text != data:
        with writing(path, "metrics"):
            atomic_write_bytes(path, text)
    return len(lines) - len(kept)


def _as_number(name: str, value: Any) -> float | int | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _format_value(value: float | int | None) -> str:
    if value is None:
        return "non-finite"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _format_console(record: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    head = [record["split"]]
    if record["phase"] is not None:
        head.append(f"phase {record['phase']}")
    if record["epoch"] is not None:
        head.append(f"ep {record['epoch']}")
    head.append(f"step {record['step']}")
    body = [f"{k} {_format_value(v)}" for k, v in metrics.items()]
    return " ".join(head) + " | " + " ".join(body)


class MetricLogger:
    """Appends metric records to ``out_dir/metrics.jsonl`` (so a resumed run continues the same
    file), mirrors them to TensorBoard under ``out_dir/tensorboard`` and logs a console line.

    is_main: whether this process writes; None asks torch.distributed (rank 0, or no group).
    purge_step: the step a resumed run continues from; TensorBoard then hides the events that
    an interrupted earlier run wrote from that step on (they are logged again).
    """

    def __init__(self, out_dir: str | Path, use_tensorboard: bool = True,
                 is_main: bool | None = None, purge_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.is_main = _is_main_rank() if is_main is None else is_main
        self._jsonl = None
        self._tb = None
        if not self.is_main:
            return
        with writing(self.path, "metrics"):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.path, "a", encoding="utf-8")
        if use_tensorboard:
            try:
                with writing(self.tensorboard_dir, "TensorBoard events in"):
                    self._tb = _open_tensorboard(self.tensorboard_dir, purge_step)
            except OutputWriteError as exc:
                log.warning(f"cannot write TensorBoard events in {self.tensorboard_dir}: {exc.reason}; "
                            f"logging metrics to {METRICS_FILE} only")

    @property
    def path(self) -> Path:
        return self.out_dir / METRICS_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.out_dir / TENSORBOARD_DIR

    def log(self, metrics: Mapping[str, Any], *, step: int, epoch: int | None = None,
            phase: str | int | None = None, split: str = "train") -> dict[str, Any] | None:
        """Record ``metrics`` (numbers or scalar tensors) at ``step``; returns the record written
        (None on non-main ranks)."""
        if not self.is_main:
            return None
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} clash with the record fields {_RESERVED}")
        values = {k: _as_number(k, v) for k, v in metrics.items()}
        record = {"step": int(step), "epoch": epoch, "phase": phase, "split": split,
                  "time": round(time.time(), 3), **values}
        with writing(self.path, "metrics"):
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            try:
                with writing(self.tensorboard_dir, "TensorBoard events in"):
                    for name, value in values.items():
                        if value is not None:
                            self._tb.add_scalar(f"{split}/{name}", value, global_step=int(step))
            except OutputWriteError as exc:
                self._drop_tensorboard(exc)
        log.info(_format_console(record, values))
        return record

    def _drop_tensorboard(self, exc: OutputWriteError) -> None:
        """Stop mirroring to TensorBoard after a failed write (metrics.jsonl goes on)."""
        log.warning(f"cannot write TensorBoard events in {self.tensorboard_dir}: {exc.reason}; "
                    f"TensorBoard is off for the rest of the run ({METRICS_FILE} goes on)")
        tb, self._tb = self._tb, None
        try:
            tb.close()
        except Exception as close_error:  # it failed already: the warning above said why
            log.debug(f"closing the TensorBoard writer: {close_error!r}")

    def flush(self) -> None:
        if self._jsonl is not None:
            with writing(self.path, "metrics"):
                self._jsonl.flush()
        if self._tb is not None:
            try:
                with writing(self.tensorboard_dir, "TensorBoard events in"):
                    self._tb.flush()
            except OutputWriteError as exc:
                self._drop_tensorboard(exc)

    def close(self) -> None:
        """Flush and close both outputs (TensorBoard first: a failure there only warns); a
        failure to write metrics.jsonl raises."""
        if self._tb is not None:
            try:
                with writing(self.tensorboard_dir, "TensorBoard events in"):
                    self._tb.close()
                self._tb = None
            except OutputWriteError as exc:
                self._drop_tensorboard(exc)
        if self._jsonl is not None:
            jsonl, self._jsonl = self._jsonl, None
            with writing(self.path, "metrics"):
                jsonl.close()

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except OSError as close_error:  # the error on its way out goes first
            if not (isinstance(exc, OSError) and exc.filename == close_error.filename):
                log.warning(f"while stopping: {close_error}")
