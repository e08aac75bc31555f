"""MetricLogger: JSONL records, TensorBoard events, console line, main rank only."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from mvmae.train.logs import METRICS_FILE, TENSORBOARD_DIR, MetricLogger


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_records_parse(tmp_path):
    with MetricLogger(tmp_path, use_tensorboard=False, is_main=True) as logger:
        logger.log({"loss": torch.tensor(2.5), "lr": 3e-4}, step=10, epoch=0, phase=1)
        logger.log({"macro_f1": 0.42, "accuracy": 0.5, "bad": float("nan")}, step=20, epoch=0,
                   split="val")
    records = _lines(tmp_path / METRICS_FILE)
    assert records[0]["loss"] == 2.5 and records[0]["lr"] == pytest.approx(3e-4)
    assert {k: records[0][k] for k in ("step", "epoch", "phase", "split")} == \
        {"step": 10, "epoch": 0, "phase": 1, "split": "train"}
    assert records[1]["split"] == "val" and records[1]["macro_f1"] == pytest.approx(0.42)
    assert records[1]["bad"] is None  # non-finite -> null: strict JSON
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_resumed_logger_appends(tmp_path):
    for step in (1, 2):
        with MetricLogger(tmp_path, use_tensorboard=False, is_main=True) as logger:
            logger.log({"loss": 1.0 / step}, step=step)
    assert [r["step"] for r in _lines(tmp_path / METRICS_FILE)] == [1, 2]


def test_tensorboard_event_file_appears(tmp_path):
    with MetricLogger(tmp_path, use_tensorboard=True, is_main=True) as logger:
        for step in range(3):
            logger.log({"loss": 1.0 / (step + 1)}, step=step, split="train")
    events = list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_missing_tensorboard_degrades_with_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with caplog.at_level(logging.WARNING, logger="mvmae.train.logs"):
        with MetricLogger(tmp_path, use_tensorboard=True, is_main=True) as logger:
            logger.log({"loss": 1.0}, step=0)
    assert "TensorBoard unavailable" in caplog.text
    assert len(_lines(tmp_path / METRICS_FILE)) == 1


def test_console_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mvmae.train.logs"):
        with MetricLogger(tmp_path, use_tensorboard=False, is_main=True) as logger:
            logger.log({"loss": 0.123456, "num_tokens": 1568}, step=5, epoch=2, phase="warmup")
    assert "train phase warmup ep 2 step 5 | loss 0.1235 num_tokens 1568" in caplog.text


def test_non_main_rank_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with MetricLogger(out, use_tensorboard=True, is_main=False) as logger:
        assert logger.log({"loss": 1.0}, step=0) is None
    assert not out.exists()


@pytest.mark.parametrize("metrics,error", [({"step": 1.0}, ValueError), ({"x": "high"}, TypeError),
                                           ({"x": torch.ones(2)}, ValueError)])
def test_bad_metrics_are_rejected(tmp_path, metrics, error):
    with MetricLogger(tmp_path, use_tensorboard=False, is_main=True) as logger:
        with pytest.raises(error):
            logger.log(metrics, step=0)
