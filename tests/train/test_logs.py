"""MetricLogger: JSONL records, TensorBoard events, console line, main rank only."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from mvmae.train.logs import METRICS_FILE, TENSORBOARD_DIR, MetricLogger, truncate_records


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


def test_truncate_records_keeps_checkpointed_epochs_byte_for_byte(tmp_path):
    path = tmp_path / METRICS_FILE
    kept = b'{"step": 3, "epoch": 0, "loss": 1.25, "time": 1.5}\n{"step": 3, "epoch": 0, "split": "val"}\n'
    path.write_bytes(kept + b'{"step": 6, "epoch": 1, "loss": 1.0}\n{"step": 7, "epo')
    assert truncate_records(path, last_epoch=0) == 2
    assert path.read_bytes() == kept
    inode = path.stat().st_ino
    assert truncate_records(path, last_epoch=0) == 0 and path.stat().st_ino == inode  # not rewritten
    assert truncate_records(path, last_epoch=None) == 2 and path.read_bytes() == b""
    assert truncate_records(tmp_path / "missing.jsonl", last_epoch=3) == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_failed_tensorboard_writes_warn_and_metrics_go_on(tmp_path, caplog):
    """TensorBoard only mirrors metrics.jsonl: when its folder becomes unusable (here replaced by
    a file, so its writer thread fails to open the event file) the logger warns once, stops
    mirroring and keeps writing records."""
    threads = set(threading.enumerate())
    with caplog.at_level(logging.WARNING, logger="mvmae.train.logs"):
        with MetricLogger(tmp_path, use_tensorboard=True, is_main=True) as logger:
            logger.log({"loss": 1.0}, step=0)
            logger.flush()
            shutil.rmtree(tmp_path / TENSORBOARD_DIR)
            (tmp_path / TENSORBOARD_DIR).write_text("not a folder")
            for step in range(1, 4):
                logger.log({"loss": 1.0 / (step + 1)}, step=step)
                logger.flush()
    for thread in set(threading.enumerate()) - threads:  # the failed writer ends within this test
        thread.join(timeout=5)
    assert caplog.text.count("TensorBoard is off for the rest of the run") == 1
    assert [r["step"] for r in _lines(tmp_path / METRICS_FILE)] == [0, 1, 2, 3]


FILE_SIZE_LIMIT_RUN = """
import logging, resource, signal, sys
from pathlib import Path
from mvmae.train.logs import MetricLogger
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
logger = MetricLogger(Path(sys.argv[1]), use_tensorboard=True, is_main=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
for step in range(4):  # 40 scalars a step: the event file passes 6000 bytes long before metrics.jsonl
    logger.log({f"m{i:02d}": float(step + i) for i in range(40)}, step=step)
    logger.flush()
logger.close()
"""


def test_tensorboard_writer_thread_failure_is_one_warning(tmp_path):
    """TensorBoard's writer thread fails a write (here: a file-size limit, as a full disk would):
    one warning, the records go on, and no thread traceback cuts into the console output."""
    run = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT_RUN, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("TensorBoard is off for the rest of the run") == 1, run.stderr
    assert "Traceback" not in run.stderr and "Exception in thread" not in run.stderr, run.stderr
    assert [r["step"] for r in _lines(tmp_path / METRICS_FILE)] == [0, 1, 2, 3]
