"""Training metrics: one JSONL file, TensorBoard scalars and a console line per record.

``metrics.jsonl`` holds one JSON object per line: ``step``, ``epoch``, ``phase``, ``split``,
``time`` (unix seconds) and the metrics by name; non-finite values are written as ``null`` so
every line is strict JSON. TensorBoard tags are ``<split>/<metric>`` at ``step``. Only the main
rank writes anything.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import torch

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "epoch", "phase", "split", "time")


def _is_main_rank() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _open_tensorboard(log_dir: Path):
    """A SummaryWriter, or None with a warning when TensorBoard cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning(f"TensorBoard unavailable ({exc}); logging metrics to {METRICS_FILE} only")
        return None
    return SummaryWriter(log_dir=str(log_dir))


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
    """

    def __init__(self, out_dir: str | Path, use_tensorboard: bool = True,
                 is_main: bool | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.is_main = _is_main_rank() if is_main is None else is_main
        self._jsonl = None
        self._tb = None
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / METRICS_FILE, "a", encoding="utf-8")
        if use_tensorboard:
            self._tb = _open_tensorboard(self.out_dir / TENSORBOARD_DIR)

    @property
    def path(self) -> Path:
        return self.out_dir / METRICS_FILE

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
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in values.items():
                if value is not None:
                    self._tb.add_scalar(f"{split}/{name}", value, global_step=int(step))
        log.info(_format_console(record, values))
        return record

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
