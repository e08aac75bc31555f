"""Multi-view testing: clip-level scores (several clips x crops of one video) to video scores.

``ViewAggregator`` keeps one row per video (a running sum or max of its clips' class
probabilities, a view count and the label), so memory grows with the number of videos V and
never with the number of clips N: a test loop feeds it batch by batch and the clip scores are
dropped as it goes. ``aggregate_views`` is the same for arrays already in hand, fed in chunks.

Distributed testing: each rank aggregates the clips it saw, then ``gather()`` merges the
per-video states of every rank (sums and counts add, maxima take the max), so a video whose
clips were split across ranks is still aggregated once. A sampler that pads (DistributedSampler
repeats up to world_size - 1 clips) gives those clips a double weight; shard by video to avoid it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch.distributed as dist

from mvmae.eval.metrics import as_numpy, check_labels

AGGREGATIONS = ("mean", "max")
_NO_LABEL = -1


@dataclass
class VideoScores:
    """Per-video result: ``scores`` float64 (V, C), ``keys`` V video keys in order of first
    appearance, ``labels`` int64 (V,) or None, ``num_views`` int64 (V,) clips per video."""

    scores: np.ndarray
    keys: list[str]
    labels: np.ndarray | None
    num_views: np.ndarray


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64: (N, C) logits -> (N, C) probabilities."""
    shifted = scores.astype(np.float64) - scores.max(1, keepdims=True)  # exp never overflows
    exp = np.exp(shifted)
    return exp / exp.sum(1, keepdims=True)


class ViewAggregator:
    """Aggregates clip scores into per-video scores, incrementally.

    num_classes: C. how: ``mean`` (average over a video's views) or ``max`` (per-class max).
    apply_softmax: turn each clip's logits into probabilities first (softmax-then-mean, the
    default); False when the scores are already probabilities or should be pooled raw.
    """

    def __init__(self, num_classes: int, how: str = "mean", apply_softmax: bool = True) -> None:
        if how not in AGGREGATIONS:
            raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.how, self.apply_softmax = num_classes, how, apply_softmax
        self.reset()

    def reset(self) -> None:
        """Forget every video."""
        self._index: dict[str, int] = {}
        self._acc = np.zeros((0, self.num_classes), dtype=np.float64)  # (capacity, C)
        self._count = np.zeros(0, dtype=np.int64)
        self._labels = np.zeros(0, dtype=np.int64)
        self._has_labels: bool | None = None

    @property
    def num_videos(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-video arrays (grows with videos, not clips)."""
        return self._acc.nbytes + self._count.nbytes + self._labels.nbytes

    def _rows_for(self, keys: Sequence[str]) -> np.ndarray:
        """Row of each key, adding new videos (arrays grow by doubling)."""
        rows = np.fromiter((self._index.setdefault(str(k), len(self._index)) for k in keys),
                           dtype=np.int64, count=len(keys))
        needed = len(self._index)
        if needed > len(self._count):
            capacity = max(needed, 2 * len(self._count), 64)
            fill = 0.0 if self.how == "mean" else -np.inf
            grown = np.full((capacity, self.num_classes), fill, dtype=np.float64)
            grown[: len(self._acc)] = self._acc
            self._acc = grown
            self._count = np.concatenate([self._count, np.zeros(capacity - len(self._count),
                                                                np.int64)])
            self._labels = np.concatenate([self._labels, np.full(capacity - len(self._labels),
                                                                 _NO_LABEL, np.int64)])
        return rows

    def _check_label_use(self, has_labels: bool) -> None:
        if self._has_labels is not None and self._has_labels != has_labels:
            raise ValueError("labels must be given with every update or with none")
        self._has_labels = has_labels

    def _set_labels(self, rows: np.ndarray, labels: np.ndarray, keys: Sequence[str]) -> None:
        stored = self._labels[rows]
        self._labels[rows] = np.where(stored == _NO_LABEL, labels, stored)
        clash = self._labels[rows] != labels  # a video whose clips disagree on the label
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise ValueError(f"video {keys[i]!r} has clips labelled {self._labels[rows[i]]} "
                             f"and {labels[i]}")

    def update(self, scores: Any, keys: Sequence[str], labels: Any | None = None) -> None:
        """Add clips: ``scores`` (B, C), ``keys`` B video keys (clips of one video share its key),
        ``labels`` int (B,) or None; a video's clips must agree on the label."""
        scores = as_numpy(scores)
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"scores must have shape (B, {self.num_classes}), got {scores.shape}")
        if len(keys) != len(scores):
            raise ValueError(f"{len(keys)} keys for {len(scores)} clips")
        self._check_label_use(labels is not None)
        rows = self._rows_for(keys)
        values = softmax(scores) if self.apply_softmax else scores.astype(np.float64)
        if self.how == "mean":
            np.add.at(self._acc, rows, values)
        else:
            np.maximum.at(self._acc, rows, values)
        np.add.at(self._count, rows, 1)
        if labels is not None:
            self._set_labels(rows, check_labels(labels, self.num_classes, len(keys), "labels"),
                             keys)

    def merge(self, other: "ViewAggregator") -> "ViewAggregator":
        """Add ``other``'s videos into this one (same num_classes, how, apply_softmax)."""
        if (other.num_classes, other.how, other.apply_softmax) != \
                (self.num_classes, self.how, self.apply_softmax):
            raise ValueError("can only merge aggregators with the same classes and settings")
        state = other.state()
        self._merge_state(*state)
        return self

    def state(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
        """(keys, accumulated (V, C), counts (V,), labels (V,) or None): what merge adds."""
        v = self.num_videos
        labels = self._labels[:v].copy() if self._has_labels else None
        return list(self._index), self._acc[:v].copy(), self._count[:v].copy(), labels

    def _merge_state(self, keys: list[str], acc: np.ndarray, count: np.ndarray,
                     labels: np.ndarray | None) -> None:
        if not keys:
            return
        self._check_label_use(labels is not None)
        rows = self._rows_for(keys)  # keys are unique within one state
        if self.how == "mean":
            self._acc[rows] += acc
        else:
            self._acc[rows] = np.maximum(self._acc[rows], acc)
        self._count[rows] += count
        if labels is not None:
            self._set_labels(rows, labels, keys)

    def gather(self) -> "ViewAggregator":
        """Merge every rank's videos into every rank's aggregator, in place (rank order); a
        no-op without an initialised process group of more than one process. Every rank must
        call it. The per-rank states travel as pickled objects (V_r x C float64 each)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        self.reset()
        for state in states:
            self._merge_state(*state)
        return self

    def result(self) -> VideoScores:
        """The per-video scores so far: the mean or max over each video's views."""
        v = self.num_videos
        acc, count = self._acc[:v], self._count[:v]
        scores = acc / count[:, None] if self.how == "mean" else acc.copy()  # (V, C)
        labels = self._labels[:v].copy() if self._has_labels else None
        return VideoScores(scores, list(self._index), labels, count.copy())


def aggregate_views(scores: Any, keys: Sequence[str], how: str = "mean",
                    apply_softmax: bool = True,
                    chunk_size: int = 4096) -> tuple[np.ndarray, list[str]]:
    """Per-video scores from clip scores: ``scores`` (N, C), ``keys`` N video keys ->
    (``video_scores`` float64 (V, C), ``video_keys`` V keys in order of first appearance).

    Default: softmax each clip, then average a video's clips. The clips are fed to a
    ``ViewAggregator`` ``chunk_size`` rows at a time, so temporaries stay at chunk size.
    """
    scores = as_numpy(scores)
    if scores.ndim != 2 or len(keys) != len(scores):
        raise ValueError(f"scores must be (N, C) with one key per row, got {scores.shape} "
                         f"and {len(keys)} keys")
    aggregator = ViewAggregator(scores.shape[1], how, apply_softmax)
    for start in range(0, len(keys), chunk_size):
        aggregator.update(scores[start:start + chunk_size], keys[start:start + chunk_size])
    result = aggregator.result()
    return result.scores, result.keys
