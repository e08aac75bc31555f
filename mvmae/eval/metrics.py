"""Classification metrics over clip or video scores: accuracy, top-k, macro P/R/F1, confusion.

Everything is computed from a confusion matrix (``np.bincount``) and the score matrix, in numpy;
inputs may be numpy arrays or torch tensors (any device or float dtype).

Which classes the macro metrics average over
--------------------------------------------
``macro_precision``, ``macro_recall`` and ``macro_f1`` average over the *active* classes: those
that occur in the labels OR in the predictions. Within them a 0/0 counts as 0 (scikit-learn's
``zero_division=0``): a class that is predicted but never true has precision 0 (its predictions
are all wrong) and recall 0; a class that is true but never predicted has precision 0. Classes
that occur in neither are left out, so a batch or subset that happens to lack some of the 155
classes is not scored as if the model had failed on them. This is exactly scikit-learn's
``f1_score(..., average="macro", labels=None, zero_division=0)`` (``labels=None`` means the union
of ``y_true`` and ``y_pred``), and equals ``labels=range(num_classes)`` whenever every class
occurs. ``num_classes_averaged`` in the result says how many classes were averaged.

``mean_class_acc`` is the mean per-class recall over the classes present in the labels only
(scikit-learn's ``balanced_accuracy_score``); it differs from ``macro_recall`` when the model
predicts classes that the labels lack.

Ties in the scores are broken towards the lower class index, as ``argmax`` does, for top-1 and
top-k alike (so constant scores never count as a hit for every class at once).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from mvmae.train.distributed import collective_device

log = logging.getLogger(__name__)

METRIC_KEYS = ("top1", "top5", "macro_f1", "macro_precision", "macro_recall", "mean_class_acc")
TOP_K = 5


def as_numpy(array: Any, dtype: Any | None = None) -> np.ndarray:
    """``array`` (numpy, torch on any device and dtype, or a sequence) as a numpy array."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.is_floating_point():
            array = array.float()  # bf16/fp16 have no numpy equivalent
        array = array.numpy()
    return np.asarray(array, dtype=dtype)


def check_scores_labels(scores: Any, labels: Any,
                        num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``scores`` float (N, C) and ``labels`` int64 (N,) with C == ``num_classes``."""
    scores = as_numpy(scores)
    labels = as_numpy(labels)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must have shape (N, {num_classes}), got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"scores contain NaN in {int(np.isnan(scores).any(1).sum())} rows")
    return scores, check_labels(labels, num_classes, len(scores), "labels")


def check_labels(labels: Any, num_classes: int, num_samples: int, name: str) -> np.ndarray:
    """``labels`` as int64 (N,), every value in [0, num_classes)."""
    labels = as_numpy(labels)
    if labels.shape != (num_samples,):
        raise ValueError(f"{name} must have shape ({num_samples},), got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"{name} out of range [0, {num_classes}): {np.unique(labels[bad])[:10]}")
    return labels


def confusion_matrix(pred: Any, labels: Any, num_classes: int) -> np.ndarray:
    """int64 (C, C) counts: row = true class, column = predicted class."""
    labels = check_labels(labels, num_classes, len(as_numpy(labels)), "labels")
    pred = check_labels(pred, num_classes, len(labels), "pred")
    counts = np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)  # (C_true, C_pred)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise with 0 where den == 0 (zero_division=0)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_stats(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class vectors (C,) from a confusion matrix: precision, recall, f1 (0/0 -> 0),
    support (true count) and predicted (predicted count)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    return {"precision": _ratio(tp, predicted), "recall": _ratio(tp, support),
            "f1": _ratio(2 * tp, support + predicted), "support": support,
            "predicted": predicted}


def top_k_accuracy(scores: Any, labels: Any, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (k capped at C); ties
    rank the lower class index first, so k=1 equals argmax accuracy."""
    scores, labels = as_numpy(scores), as_numpy(labels).astype(np.int64)
    if len(labels) == 0:
        raise ValueError("top-k accuracy of zero samples is undefined")
    rows = np.arange(len(labels))
    true_score = scores[rows, labels][:, None]  # (N, 1)
    lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]  # (N, C)
    rank = (scores > true_score).sum(1) + ((scores == true_score) & lower_index).sum(1)
    return float((rank < min(k, scores.shape[1])).mean())


def classification_metrics(scores: Any, labels: Any, num_classes: int) -> dict[str, float | int]:
    """Metrics of ``scores`` float (N, C) (logits or probabilities) against ``labels`` int (N,).

    Returns plain Python numbers (JSON- and MetricLogger-ready): ``top1``, ``top5``
    (top-min(5, C)), ``macro_f1``, ``macro_precision``, ``macro_recall`` (over the classes in the
    labels or the predictions, see the module docstring), ``mean_class_acc`` (mean recall over
    the classes in the labels), all fractions in [0, 1]; and ``num_samples``, ``num_classes``,
    ``num_classes_averaged``, ``num_classes_in_labels``. Raises ValueError on zero samples.
    """
    scores, labels = check_scores_labels(scores, labels, num_classes)
    if len(labels) == 0:
        raise ValueError("metrics of zero samples are undefined")
    cm = confusion_matrix(scores.argmax(1), labels, num_classes)
    stats = per_class_stats(cm)
    active = (stats["support"] + stats["predicted"]) > 0
    in_labels = stats["support"] > 0
    return {
        "top1": float(np.trace(cm) / len(labels)),
        "top5": top_k_accuracy(scores, labels, TOP_K),
        "macro_f1": float(stats["f1"][active].mean()),
        "macro_precision": float(stats["precision"][active].mean()),
        "macro_recall": float(stats["recall"][active].mean()),
        "mean_class_acc": float(stats["recall"][in_labels].mean()),
        "num_samples": int(len(labels)),
        "num_classes": int(num_classes),
        "num_classes_averaged": int(active.sum()),
        "num_classes_in_labels": int(in_labels.sum()),
    }


def per_class_report(cm: Any, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per class (in class-index order): ``class_index``, ``class_name``,
    ``precision``, ``recall``, ``f1`` (0/0 -> 0), ``support`` (true count), ``predicted``."""
    cm = as_numpy(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"cm must be ({len(class_names)}, {len(class_names)}), got {cm.shape}")
    stats = per_class_stats(cm)
    return [{"class_index": i, "class_name": str(name),
             "precision": float(stats["precision"][i]), "recall": float(stats["recall"][i]),
             "f1": float(stats["f1"][i]), "support": int(stats["support"][i]),
             "predicted": int(stats["predicted"][i])}
            for i, name in enumerate(class_names)]


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's ``array`` (N_r, ...) in rank order; ranks may hold different N_r (rows are
    padded to the largest N_r for the collective, then trimmed). Every rank must call it."""
    device = collective_device()
    size = torch.tensor([len(array)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    if max(sizes) == 0:
        return [array[:0] for _ in sizes]
    padded = torch.zeros((max(sizes), *array.shape[1:]), dtype=torch.from_numpy(array).dtype,
                         device=device)  # (N_max, ...)
    padded[: len(array)] = torch.from_numpy(array).to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [part[:n].cpu().numpy() for part, n in zip(parts, sizes)]


class StreamingMetrics:
    """Accumulates a validation loop's scores, labels and (optional) sample keys batch by
    batch; ``compute()`` gives ``classification_metrics`` over everything seen.

    Scores are kept on the CPU as float32 (N x C x 4 bytes: 20k clips x 155 classes is 12 MB).
    Under torch.distributed, call ``gather()`` on every rank before ``compute()``.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._keys: list[str] | None = None
        self._num_updates = 0
        self._gathered = False

    def __len__(self) -> int:
        return sum(len(labels) for labels in self._labels)

    def update(self, scores: Any, labels: Any, keys: Sequence[str] | None = None) -> None:
        """Add a batch: ``scores`` (B, C), ``labels`` (B,), ``keys`` B sample keys or None
        (either always or never given)."""
        if self._gathered:
            raise RuntimeError("update() after gather(): call reset() to start a new epoch")
        scores, labels = check_scores_labels(scores, labels, self.num_classes)
        if (keys is not None) != (self._keys is not None) and self._num_updates:
            raise ValueError("keys must be given for every batch or for none")
        if keys is not None:
            if len(keys) != len(labels):
                raise ValueError(f"{len(keys)} keys for {len(labels)} samples")
            if self._keys is None:
                self._keys = []
            self._keys.extend(str(k) for k in keys)
        self._scores.append(scores.astype(np.float32, copy=False))
        self._labels.append(labels)
        self._num_updates += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
        """Everything accumulated: scores float32 (N, C), labels int64 (N,), keys or None."""
        scores = np.concatenate(self._scores) if self._scores else \
            np.zeros((0, self.num_classes), np.float32)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        return scores, labels, None if self._keys is None else list(self._keys)

    def gather(self, drop_duplicate_keys: bool = True) -> "StreamingMetrics":
        """Replace this rank's samples with every rank's (in rank order), in place; a no-op
        without an initialised process group of more than one process. Every rank must call it.

        drop_duplicate_keys: keep only the first sample of each key. DistributedSampler pads
        the dataset so every rank gets as many samples, which repeats a few; without this they
        would be counted twice. Keys must then be unique per sample (clip keys, not video keys),
        and a repeated key with a different label raises ValueError.
        """
        if self._gathered:
            raise RuntimeError("gather() called twice on the same data")
        scores, labels, keys = self.arrays()
        if _dist_active():
            scores = np.concatenate(all_gather_rows(scores))
            labels = np.concatenate(all_gather_rows(labels))
            # A rank without samples (fewer val shards than ranks) passed neither keys nor not.
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (keys, self._num_updates))
            all_keys = [k for k, num_updates in parts if num_updates]
            if any((k is None) != (all_keys[0] is None) for k in all_keys):
                raise ValueError("some ranks passed keys and others did not")
            keys = None if not all_keys or all_keys[0] is None else [k for part in all_keys for k in part]
        if drop_duplicate_keys and keys is not None:
            scores, labels, keys = _drop_duplicates(scores, labels, keys)
        self._scores, self._labels, self._keys = [scores], [labels], keys
        self._gathered = True
        return self

    def compute(self) -> dict[str, float | int]:
        """``classification_metrics`` over all samples seen (or gathered)."""
        scores, labels, _ = self.arrays()
        return classification_metrics(scores, labels, self.num_classes)

    def confusion_matrix(self) -> np.ndarray:
        """int64 (C, C) of argmax predictions, rows true."""
        scores, labels, _ = self.arrays()
        return confusion_matrix(scores.argmax(1), labels, self.num_classes)


def _drop_duplicates(scores: np.ndarray, labels: np.ndarray,
                     keys: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Keep the first row of each key; a repeated key must carry the same label."""
    first: dict[str, int] = {}
    keep = []
    for row, key in enumerate(keys):
        seen = first.setdefault(key, row)
        if seen == row:
            keep.append(row)
        elif labels[seen] != labels[row]:
            raise ValueError(f"key {key!r} occurs with labels {labels[seen]} and {labels[row]}")
    if len(keep) < len(keys):
        log.info(f"dropped {len(keys) - len(keep)} repeated samples (by key) of {len(keys)}")
    keep_idx = np.asarray(keep, dtype=np.int64)
    return scores[keep_idx], labels[keep_idx], [keys[i] for i in keep]
