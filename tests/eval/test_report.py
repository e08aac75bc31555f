"""Report files: contents parse, PNGs are real images, writes are atomic; console table; curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvmae.eval.metrics import METRIC_KEYS, classification_metrics, confusion_matrix
from mvmae.eval.report import (
    CONFUSION_CSV, CONFUSION_PNG, METRICS_JSON, PER_CLASS_CSV, PER_VIDEO_JSONL, PREDICTIONS_CSV,
    _curve_points, format_table, plot_training_curves, prediction_records, write_report)


def _case(num_classes: int, num_samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    scores = rng.normal(size=(num_samples, num_classes))
    scores[np.arange(num_samples), labels] += 2.0
    names = [f"A{i:03d} action {i}" for i in range(num_classes)]
    cm = confusion_matrix(scores.argmax(1), labels, num_classes)
    return scores, labels, names, cm, classification_metrics(scores, labels, num_classes)


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def _check_png(path: Path, min_px: int, max_px: int) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min_px <= image.width <= max_px and min_px <= image.height <= max_px, image.size
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # not a blank canvas
    return pixels


def test_report_files_exist_and_parse(tmp_path):
    scores, labels, names, cm, metrics = _case(12, 90)
    keys = [f"video{i:03d}" for i in range(90)]
    paths = write_report(tmp_path / "report", metrics, cm, names,
                         prediction_records(scores, keys, labels))
    out = tmp_path / "report"
    assert set(paths) == {METRICS_JSON, PER_CLASS_CSV, CONFUSION_CSV, CONFUSION_PNG,
                          PREDICTIONS_CSV, PER_VIDEO_JSONL}
    assert all(p.parent == out and p.is_file() for p in paths.values())
    assert _leftovers(out) == []

    written = json.loads((out / METRICS_JSON).read_text())
    assert set(METRIC_KEYS) <= set(written)
    assert written == pytest.approx(metrics)

    per_class = _read_csv(out / PER_CLASS_CSV)
    assert per_class[0] == ["class_index", "class_name", "precision", "recall", "f1", "support",
                            "predicted"]
    assert [row[1] for row in per_class[1:]] == names
    assert sum(int(row[5]) for row in per_class[1:]) == 90
    f1 = np.mean([float(row[4]) for row in per_class[1:] if int(row[5]) + int(row[6]) > 0])
    assert f1 == pytest.approx(metrics["macro_f1"], abs=1e-5)

    matrix = _read_csv(out / CONFUSION_CSV)
    assert matrix[0] == ["true\\pred", *names]
    assert [row[0] for row in matrix[1:]] == names
    np.testing.assert_array_equal(np.array([row[1:] for row in matrix[1:]], dtype=int), cm)

    predictions = _read_csv(out / PREDICTIONS_CSV)
    assert predictions[0] == ["key", "label", "label_name", "pred", "pred_name", "correct", "top5"]
    assert [row[0] for row in predictions[1:]] == keys
    assert np.mean([int(row[5]) for row in predictions[1:]]) == pytest.approx(metrics["top1"])
    assert all(row[4] == names[int(row[3])] for row in predictions[1:])

    records = [json.loads(line) for line in (out / PER_VIDEO_JSONL).read_text().splitlines()]
    assert [r["key"] for r in records] == keys
    assert [r["label"] for r in records] == labels.tolist()
    assert [r["pred"] for r in records] == scores.argmax(1).tolist()
    assert all(len(r["top5"]) == 5 and r["top5"][0] == r["pred"] for r in records)
    np.testing.assert_allclose([r["scores"] for r in records], scores, atol=1e-6)  # fusable
    _check_png(out / CONFUSION_PNG, 300, 2500)


def test_records_without_labels_or_with_few_classes(tmp_path):
    scores, labels, names, cm, metrics = _case(3, 10)
    write_report(tmp_path, metrics, cm, names, prediction_records(scores, list("abcdefghij")))
    rows = _read_csv(tmp_path / PREDICTIONS_CSV)[1:]
    assert all(row[1] == row[2] == row[5] == "" for row in rows)  # no label: blank, not 0
    records = [json.loads(line) for line in (tmp_path / PER_VIDEO_JSONL).read_text().splitlines()]
    assert all(r["label"] is None and len(r["top5"]) == 3 for r in records)
    assert not (tmp_path.parent / PREDICTIONS_CSV).exists()


@pytest.mark.parametrize("num_classes", [5, 60, 155])
def test_confusion_png_scales_with_classes(tmp_path, num_classes):
    _, _, names, cm, metrics = _case(num_classes, 20 * num_classes)
    write_report(tmp_path, metrics, cm, names)
    pixels = _check_png(tmp_path / CONFUSION_PNG, 400, 2300)
    assert not (tmp_path / PREDICTIONS_CSV).exists()
    if num_classes == 155:
        assert min(pixels.shape) > 1500  # about 10 px per class
    if num_classes == 5:
        assert max(pixels.shape) < 900


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    scores, labels, names, cm, metrics = _case(4, 30)
    write_report(tmp_path, metrics, cm, names, prediction_records(scores, range(30), labels))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError):
        write_report(tmp_path, {**metrics, "top1": object()}, cm, names)

    def broken_records():
        yield from prediction_records(scores[:5], range(5), labels[:5])
        raise RuntimeError("model crashed mid-test")

    with pytest.raises(RuntimeError, match="mid-test"):
        write_report(tmp_path, metrics, cm, names, broken_records())
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after[METRICS_JSON] == before[METRICS_JSON]
    assert after[PREDICTIONS_CSV] == before[PREDICTIONS_CSV]
    assert after[PER_VIDEO_JSONL] == before[PER_VIDEO_JSONL]
    assert _leftovers(tmp_path) == []


def test_missing_metric_keys_or_wrong_cm_raise(tmp_path):
    _, _, names, cm, metrics = _case(4, 30)
    with pytest.raises(ValueError, match="macro_f1"):
        write_report(tmp_path, {k: v for k, v in metrics.items() if k != "macro_f1"}, cm, names)
    with pytest.raises(ValueError, match="class names"):
        write_report(tmp_path, metrics, cm, names[:3])


def test_format_table_is_aligned():
    metrics = classification_metrics(*_case(12, 90)[:2], 12)
    table = format_table({**metrics, "loss": 1.23456, "bad": float("nan")})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert len({len(line) for line in lines}) == 1  # every line equally wide: right-aligned
    assert [line.split()[0] for line in lines[2:8]] == list(METRIC_KEYS)
    assert f"{100 * metrics['top1']:.2f}%" in lines[2]
    assert "1.235" in table and "n/a" in table
    assert lines[-1].split() == ["num_samples", "90"]


def _write_log(path: Path, records: list[dict] | None, garbage: str = "") -> Path:
    lines = [json.dumps(r) for r in records or []]
    path.write_text("\n".join(lines) + ("\n" if lines else "") + garbage)
    return path


def _training_log(num_epochs: int = 8, steps_per_epoch: int = 5) -> list[dict]:
    records, step = [], 0
    for epoch in range(num_epochs):
        for _ in range(steps_per_epoch):
            step += 1
            records.append({"step": step, "epoch": epoch, "phase": 1 + (epoch > 2), "time": 1e9,
                            "split": "train", "loss": 3.0 / step, "lr": 1e-4})
        records.append({"step": step, "epoch": epoch, "split": "val", "loss": 2.5 / (epoch + 1),
                        "top1": 0.1 * epoch, "macro_f1": 0.08 * epoch, "note": "text"})
    return records


def test_training_curves_png(tmp_path):
    path = _write_log(tmp_path / "metrics.jsonl", _training_log(), garbage='{"step": 9, "lo')
    assert plot_training_curves(path, tmp_path / "curves.png") == tmp_path / "curves.png"
    _check_png(tmp_path / "curves.png", 300, 2000)
    assert _leftovers(tmp_path) == []


def test_curve_points_average_per_epoch_or_fall_back_to_step():
    axis, curves = _curve_points(_training_log(num_epochs=3, steps_per_epoch=2))
    assert axis == "epoch"
    assert set(curves) == {"loss", "lr", "top1", "macro_f1"}  # not step/epoch/time/phase/text
    x, y = curves["loss"]["train"]
    np.testing.assert_array_equal(x, [0, 1, 2])
    np.testing.assert_allclose(y, [(3 / 1 + 3 / 2) / 2, (3 / 3 + 3 / 4) / 2, (3 / 5 + 3 / 6) / 2])
    axis, curves = _curve_points([{"step": 1, "split": "train", "loss": 2.0},
                                  {"step": 2, "epoch": None, "split": "train", "loss": None},
                                  {"step": 3, "split": "train", "loss": 1.0}])
    assert axis == "step"
    np.testing.assert_array_equal(curves["loss"]["train"][0], [1, 3])  # null skipped


@pytest.mark.parametrize("content", [None, "", "not json\n[1, 2]\n",
                                     '{"epoch": 0, "split": "val", "note": "x"}\n'])
def test_training_curves_skip_when_nothing_to_plot(tmp_path, content):
    path = tmp_path / "metrics.jsonl"
    if content is not None:
        path.write_text(content)
    assert plot_training_curves(path, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
