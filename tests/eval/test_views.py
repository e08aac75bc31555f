"""Multi-view testing: per-video aggregation of clip scores, bounded memory, merge and gather."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvmae.eval.metrics import classification_metrics
from mvmae.eval.views import ViewAggregator, aggregate_views, softmax

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import two_ranks
except ImportError:  # ... or as the `tests` package
    from tests import two_ranks

# 3 clips of "a", 2 of "b", interleaved
CLIP_SCORES = np.array([[2.0, 0.0, 0.0],
                        [0.0, 1.0, 0.0],
                        [0.0, 0.0, 3.0],
                        [1.0, 1.0, 1.0],
                        [0.0, 4.0, 0.0]])
CLIP_KEYS = ["a", "b", "a", "a", "b"]


def _reference(scores: np.ndarray, keys: list[str], how: str, apply_softmax: bool):
    """Plain per-video pooling: the definition the aggregator must match."""
    values = softmax(scores) if apply_softmax else scores
    order = list(dict.fromkeys(keys))
    pool = np.mean if how == "mean" else np.max
    rows = [pool(values[[k == key for k in keys]], axis=0) for key in order]
    return np.stack(rows), order


def test_softmax_then_mean_by_hand():
    video_scores, video_keys = aggregate_views(CLIP_SCORES, CLIP_KEYS)
    assert video_keys == ["a", "b"]  # order of first appearance
    e = np.exp
    a = (np.array([e(2), 1, 1]) / (e(2) + 2) + np.array([1, 1, e(3)]) / (e(3) + 2) + 1 / 3) / 3
    b = (np.array([1, e(1), 1]) / (e(1) + 2) + np.array([1, e(4), 1]) / (e(4) + 2)) / 2
    np.testing.assert_allclose(video_scores, np.stack([a, b]))
    np.testing.assert_allclose(video_scores.sum(1), 1.0)


def test_max_without_softmax_by_hand():
    video_scores, _ = aggregate_views(CLIP_SCORES, CLIP_KEYS, how="max", apply_softmax=False)
    np.testing.assert_array_equal(video_scores, [[2.0, 1.0, 3.0], [0.0, 4.0, 0.0]])


@pytest.mark.parametrize("how", ["mean", "max"])
@pytest.mark.parametrize("apply_softmax", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_chunked_matches_reference(how, apply_softmax, chunk_size):
    rng = np.random.default_rng(0)
    keys = [f"video{i}" for i in rng.integers(0, 23, 400)]
    scores = rng.normal(size=(400, 11)) * 3 - 5  # all negative when raw: max starts at -inf
    video_scores, video_keys = aggregate_views(scores, keys, how, apply_softmax, chunk_size)
    expected, expected_keys = _reference(scores, keys, how, apply_softmax)
    assert video_keys == expected_keys
    np.testing.assert_allclose(video_scores, expected, rtol=1e-12, atol=1e-12)


def test_aggregator_labels_views_and_video_metrics():
    aggregator = ViewAggregator(3)
    labels = np.array([2, 1, 2, 2, 1])
    aggregator.update(torch.from_numpy(CLIP_SCORES[:2]), CLIP_KEYS[:2], torch.tensor(labels[:2]))
    aggregator.update(CLIP_SCORES[2:], CLIP_KEYS[2:], labels[2:])
    result = aggregator.result()
    assert result.keys == ["a", "b"]
    np.testing.assert_array_equal(result.labels, [2, 1])
    np.testing.assert_array_equal(result.num_views, [3, 2])
    metrics = classification_metrics(result.scores, result.labels, 3)
    assert metrics["top1"] == 1.0 and metrics["num_samples"] == 2  # a -> 2, b -> 1
    with pytest.raises(ValueError, match="labelled"):
        aggregator.update(CLIP_SCORES[:1], ["a"], [0])
    with pytest.raises(ValueError, match="every update"):
        aggregator.update(CLIP_SCORES[:1], ["a"])


def test_memory_grows_with_videos_not_clips():
    rng = np.random.default_rng(1)
    num_classes, num_videos, num_clips = 155, 40, 20_000
    aggregator = ViewAggregator(num_classes)
    for start in range(0, num_clips, 500):  # a test loop: batches in, nothing kept
        keys = [f"v{i}" for i in rng.integers(0, num_videos, 500)]
        aggregator.update(rng.normal(size=(500, num_classes)).astype(np.float32), keys)
    assert aggregator.num_videos == num_videos
    assert aggregator.result().num_views.sum() == num_clips
    assert aggregator.nbytes <= 64 * (num_classes + 2) * 8  # 64 rows of capacity
    assert aggregator.nbytes < num_clips * num_classes * 4 / 100


@pytest.mark.parametrize("how", ["mean", "max"])
def test_merge_equals_one_aggregator(how):
    rng = np.random.default_rng(2)
    keys = [f"v{i}" for i in rng.integers(0, 9, 120)]
    labels = np.array([int(k[1:]) % 4 for k in keys])
    scores = rng.normal(size=(120, 4))
    whole, left, right = (ViewAggregator(4, how) for _ in range(3))
    whole.update(scores, keys, labels)
    left.update(scores[:50], keys[:50], labels[:50])
    right.update(scores[50:], keys[50:], labels[50:])
    merged = left.merge(right).result()
    expected = whole.result()
    assert merged.keys == expected.keys
    np.testing.assert_allclose(merged.scores, expected.scores, rtol=1e-12)
    np.testing.assert_array_equal(merged.labels, expected.labels)
    np.testing.assert_array_equal(merged.num_views, expected.num_views)
    assert whole.gather() is whole  # no process group: unchanged
    with pytest.raises(ValueError, match="same"):
        left.merge(ViewAggregator(4, "max" if how == "mean" else "mean"))


@pytest.mark.parametrize("kwargs,match", [
    ({"how": "median"}, "how"),
    ({"keys": ["a"] * 4}, "key"),
    ({"scores": np.zeros(5)}, "N, C"),
])
def test_bad_arguments_raise(kwargs, match):
    args = {"scores": CLIP_SCORES, "keys": CLIP_KEYS, **kwargs}
    with pytest.raises(ValueError, match=match):
        aggregate_views(**args)


@pytest.mark.slow
def test_gather_merges_videos_split_across_processes(gathered):
    data = two_ranks.make_data()
    whole = ViewAggregator(two_ranks.NUM_CLASSES)
    whole.update(data["view_scores"], two_ranks.VIEW_KEYS, data["view_labels"])
    expected = whole.result()
    for result in gathered:  # both ranks end with every video, each aggregated once
        assert result["video_keys"] == expected.keys
        assert result["video_labels"] == expected.labels.tolist()
        assert result["num_views"] == expected.num_views.tolist() == [4, 3, 3, 4]
        np.testing.assert_allclose(result["video_scores"], expected.scores, rtol=1e-12)
