"""Evaluation report files, a console table and training-curve plots.

``write_report`` fills a folder with:
- ``metrics.json``: the metrics dict (fractions in [0, 1]; non-finite values as null);
- ``per_class.csv``: class_index, class_name, precision, recall, f1, support, predicted;
- ``confusion_matrix.csv``: counts, a header row of class names, each row led by its true class;
- ``confusion_matrix.png``: rows normalised to the fraction of each true class;
- with per-video records, ``predictions.csv`` (key, label, pred, correct, top-5, names) and
  ``per_video.jsonl`` (key, label, pred, top5 and the full score vector, for late fusion).
Every file is written under a temporary name in the same folder and moved into place with
``os.replace``, so a reader sees the old file or the new one, never half of one.
Plots use matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from mvmae.eval.metrics import METRIC_KEYS, TOP_K, as_numpy, per_class_report
from mvmae.shards.writer import atomic_open

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
PER_CLASS_CSV = "per_class.csv"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_CSV = "predictions.csv"
PER_VIDEO_JSONL = "per_video.jsonl"

MAX_NAMED_TICKS = 60  # beyond this many classes, names on the axes are unreadable
MAX_ANNOTATED = 20  # up to this many classes, each cell shows its percentage
_CURVE_AXES = ("step", "epoch", "time", "phase", "split")  # record fields, not metrics


def _json_value(value: Any) -> Any:
    """Plain JSON value: numpy scalars and 0-d tensors as numbers, non-finite floats as None."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """``metrics`` as sorted, indented strict JSON, atomically."""
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack {missing}")
    body = {str(k): _json_value(v) for k, v in metrics.items()}
    with atomic_open(path) as fh:
        fh.write(json.dumps(body, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with atomic_open(path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_per_class_csv(path: str | Path, cm: np.ndarray, class_names: Sequence[str]) -> Path:
    report = per_class_report(cm, class_names)
    header = ["class_index", "class_name", "precision", "recall", "f1", "support", "predicted"]
    rows = ([r[h] if not isinstance(r[h], float) else f"{r[h]:.6f}" for h in header]
            for r in report)
    return _write_csv(Path(path), header, rows)


def write_confusion_csv(path: str | Path, cm: np.ndarray, class_names: Sequence[str]) -> Path:
    """Counts with a header row ``true\\pred, <names>`` and each row led by its true class."""
    rows = ([name, *map(int, row)] for name, row in zip(class_names, cm))
    return _write_csv(Path(path), ["true\\pred", *class_names], rows)


def _top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, ties to the lower index (as argmax)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def prediction_records(scores: Any, keys: Sequence[str],
                       labels: Any | None = None) -> Iterator[dict[str, Any]]:
    """Records for ``write_report(per_video=...)``: one per row of ``scores`` (V, C) with
    ``key``, ``label`` (int or None), ``pred``, ``top5`` and ``scores`` (a list)."""
    scores = as_numpy(scores)
    labels = None if labels is None else as_numpy(labels)
    for i, key in enumerate(keys):
        yield {"key": str(key), "label": None if labels is None else int(labels[i]),
               "scores": scores[i]}


def _complete_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """key, label, pred, top5, scores: pred and top5 derived from scores when absent."""
    scores = as_numpy(record["scores"], dtype=np.float64)
    top = list(record["top5"]) if "top5" in record else _top_k(scores, TOP_K)
    pred = int(record["pred"]) if "pred" in record else top[0]
    label = record.get("label")
    return {"key": str(record["key"]), "label": None if label is None else int(label),
            "pred": pred, "top5": [int(i) for i in top],
            "scores": np.round(scores, 6).tolist()}


def write_predictions(out_dir: str | Path, records: Iterable[Mapping[str, Any]],
                      class_names: Sequence[str]) -> tuple[Path, Path]:
    """``predictions.csv`` and ``per_video.jsonl`` in one pass over ``records`` (each needs
    ``key`` and ``scores``; ``label``, ``pred``, ``top5`` optional), so a generator works."""
    out_dir = Path(out_dir)
    csv_path, jsonl_path = out_dir / PREDICTIONS_CSV, out_dir / PER_VIDEO_JSONL
    header = ["key", "label", "label_name", "pred", "pred_name", "correct", "top5"]
    with atomic_open(csv_path) as fcsv, atomic_open(jsonl_path) as fjsonl:
        writer = csv.writer(fcsv, lineterminator="\n")
        writer.writerow(header)
        for raw in records:
            rec = _complete_record(raw)
            label = rec["label"]
            writer.writerow([rec["key"], "" if label is None else label,
                             "" if label is None else class_names[label], rec["pred"],
                             class_names[rec["pred"]], "" if label is None else
                             int(label == rec["pred"]), " ".join(map(str, rec["top5"]))])
            fjsonl.write(json.dumps(rec, allow_nan=False) + "\n")
    return csv_path, jsonl_path


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], cm: Any,
                 class_names: Sequence[str],
                 per_video: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Write the report files (see the module docstring) into ``out_dir`` (created if needed).

    metrics: at least ``top1, top5, macro_f1, macro_precision, macro_recall, mean_class_acc``.
    cm: int (C, C) confusion matrix, rows true. class_names: C names.
    per_video: records with ``key``, ``scores`` (C,) and optionally ``label``, ``pred``,
    ``top5`` (see ``prediction_records``); None writes no prediction files.
    Returns the paths written, by file name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = as_numpy(cm).astype(np.int64)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"cm is {cm.shape} for {len(class_names)} class names")
    paths = {METRICS_JSON: write_metrics_json(out_dir / METRICS_JSON, metrics),
             PER_CLASS_CSV: write_per_class_csv(out_dir / PER_CLASS_CSV, cm, class_names),
             CONFUSION_CSV: write_confusion_csv(out_dir / CONFUSION_CSV, cm, class_names)}
    title = (f"top-1 {100 * metrics['top1']:.1f}%  macro-F1 {100 * metrics['macro_f1']:.1f}%"
             if metrics.get("top1") is not None and metrics.get("macro_f1") is not None else "")
    paths[CONFUSION_PNG] = plot_confusion_matrix(cm, class_names, out_dir / CONFUSION_PNG, title)
    if per_video is not None:
        paths[PREDICTIONS_CSV], paths[PER_VIDEO_JSONL] = write_predictions(
            out_dir, per_video, class_names)
    log.info(f"wrote evaluation report ({', '.join(paths)}) to {out_dir}")
    return paths


def format_table(metrics: Mapping[str, Any]) -> str:
    """An aligned two-column text table: the headline metrics first (as percentages), then
    the other entries in name order."""
    names = [k for k in METRIC_KEYS if k in metrics] + \
        sorted(k for k in metrics if k not in METRIC_KEYS)
    cells = []
    for name in names:
        value = _json_value(metrics[name])
        if value is None:
            text = "n/a"
        elif name in METRIC_KEYS:
            text = f"{100 * value:.2f}%"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        cells.append((name, text))
    width_name = max([len("metric")] + [len(n) for n, _ in cells])
    width_value = max([len("value")] + [len(t) for _, t in cells])
    lines = [f"{'metric':<{width_name}}  {'value':>{width_value}}",
             f"{'-' * width_name}  {'-' * width_value}"]
    lines += [f"{n:<{width_name}}  {t:>{width_value}}" for n, t in cells]
    return "\n".join(lines)


def _save_figure(fig: Any, out_png: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_open(out_png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return out_png


def plot_confusion_matrix(cm: Any, class_names: Sequence[str], out_png: str | Path,
                          title: str = "") -> Path:
    """A row-normalised confusion matrix image (each row: fraction of that true class).

    Figure and font scale with the number of classes C (about 6 in at C <= 20 up to 20 in at
    C = 160, 100 dpi); class names label the axes up to 60 classes, beyond that only every
    10th class index; cells carry their percentage up to 20 classes.
    """
    from matplotlib.figure import Figure

    cm = as_numpy(cm).astype(np.float64)
    num_classes = len(class_names)
    support = cm.sum(1, keepdims=True)
    fraction = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)  # (C, C)
    side_in = float(np.clip(4.0 + 0.1 * num_classes, 6.0, 20.0))
    cell_pt = 72.0 * 0.7 * side_in / max(num_classes, 1)  # the matrix fills ~70% of the side
    font_pt = float(np.clip(0.8 * cell_pt, 4.0, 10.0))
    label_pt = float(np.clip(0.75 * side_in, 10.0, 15.0))  # titles keep up with a big figure
    fig = Figure(figsize=(side_in + 1.5, side_in), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("fraction of the true class", fontsize=label_pt)
    colorbar.ax.tick_params(labelsize=label_pt - 2)
    if num_classes <= MAX_NAMED_TICKS:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, [str(n) for n in class_names], rotation=90, fontsize=font_pt)
        ax.set_yticks(ticks, [str(n) for n in class_names], fontsize=font_pt)
        ax.set_xlabel("predicted class", fontsize=label_pt)
        ax.set_ylabel("true class", fontsize=label_pt)
    else:
        ticks = np.arange(0, num_classes, 10)
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=label_pt - 2)
        ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=label_pt - 2)
        ax.set_xlabel("predicted class index (names in per_class.csv)", fontsize=label_pt)
        ax.set_ylabel("true class index", fontsize=label_pt)
    if num_classes <= MAX_ANNOTATED:
        for (row, col), value in np.ndenumerate(fraction):
            if cm[row, col]:
                ax.text(col, row, f"{100 * value:.0f}", ha="center", va="center",
                        fontsize=font_pt, color="white" if value > 0.5 else "black")
    ax.set_title(f"Confusion matrix, rows normalised ({num_classes} classes)"
                 + (f"\n{title}" if title else ""), fontsize=label_pt + 1)
    return _save_figure(fig, Path(out_png))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; unparsable lines (a run killed mid-write) are skipped, counted."""
    records, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    if bad:
        log.warning(f"{path}: skipped {bad} lines that are not JSON objects")
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _curve_points(records: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, tuple]]]:
    """The x axis name and, per metric and split, (x, y) arrays. x is the epoch when every
    record has one (several records of one epoch averaged), else the step, else the order."""
    if all(_is_number(r.get("epoch")) for r in records):
        axis = "epoch"
    elif all(_is_number(r.get("step")) for r in records):
        axis = "step"
    else:
        axis = "record"
    sums: dict[str, dict[str, dict[float, list[float]]]] = \
        defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for order, record in enumerate(records):
        x = order if axis == "record" else record[axis]
        split = str(record.get("split", "all"))
        for name, value in record.items():
            # num_* are counts (classes, samples), not curves worth a panel.
            if name not in _CURVE_AXES and not name.startswith("num_") and _is_number(value):
                sums[name][split][x].append(float(value))
    curves = {name: {split: (np.array(sorted(by_x)),
                             np.array([np.mean(by_x[x]) for x in sorted(by_x)]))
                     for split, by_x in splits.items()}
              for name, splits in sorted(sums.items(), key=lambda kv: (kv[0] != "loss", kv[0]))}
    return axis, curves


def plot_training_curves(metrics_jsonl: str | Path, out_png: str | Path) -> Path | None:
    """One panel per numeric metric in a training log (``metrics.jsonl`` of records like
    ``{"epoch": 3, "split": "val", "loss": 1.2, "macro_f1": 0.4}``), a line per split.

    Returns the PNG path, or None (nothing written, a warning logged) when the log is missing
    or holds no numeric metric.
    """
    from matplotlib.figure import Figure

    metrics_jsonl = Path(metrics_jsonl)
    if not metrics_jsonl.is_file():
        log.warning(f"no training log at {metrics_jsonl}; no curves plotted")
        return None
    axis, curves = _curve_points(_read_jsonl(metrics_jsonl))
    if not curves:
        log.warning(f"{metrics_jsonl} holds no numeric metrics; no curves plotted")
        return None
    num_cols = min(3, len(curves))
    num_rows = math.ceil(len(curves) / num_cols)
    fig = Figure(figsize=(5.0 * num_cols, 3.5 * num_rows), layout="constrained")
    for i, (name, splits) in enumerate(curves.items()):
        ax = fig.add_subplot(num_rows, num_cols, i + 1)
        for split, (x, y) in sorted(splits.items()):
            ax.plot(x, y, marker="o" if len(x) <= 50 else None, markersize=3, label=split)
        ax.set_title(name)
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save_figure(fig, Path(out_png))
