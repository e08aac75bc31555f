"""Classification metrics: hand-built values, agreement with scikit-learn, streaming, gather."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mvmae.eval.metrics import (
    METRIC_KEYS, StreamingMetrics, classification_metrics, confusion_matrix, per_class_report,
    top_k_accuracy)

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import two_ranks
except ImportError:  # ... or as the `tests` package
    from tests import two_ranks

# 6 samples, 3 classes: predictions [0, 0, 1, 1, 2, 2]; the true class ranks 2nd in row 2,
# 3rd in row 4
HAND_SCORES = np.array([[0.9, 0.05, 0.05],
                        [0.6, 0.3, 0.1],
                        [0.3, 0.6, 0.1],
                        [0.2, 0.7, 0.1],
                        [0.4, 0.1, 0.5],
                        [0.1, 0.2, 0.7]])
HAND_LABELS = np.array([0, 0, 0, 1, 1, 2])


def _random_case(num_classes: int, num_samples: int, seed: int, all_present: bool = False):
    """Logits with the true class boosted (so accuracy is neither 0 nor 1) and labels."""
    rng = np.random.default_rng(seed)
    if all_present:
        labels = rng.permutation(np.resize(np.arange(num_classes), num_samples))
    else:
        labels = rng.integers(0, num_classes, num_samples)
    scores = rng.normal(size=(num_samples, num_classes))
    scores[np.arange(num_samples), labels] += 1.5
    return scores, labels


def _sklearn_macro(labels, pred, classes) -> dict[str, float]:
    kw = {"labels": classes, "average": "macro", "zero_division": 0}
    return {"macro_f1": skm.f1_score(labels, pred, **kw),
            "macro_precision": skm.precision_score(labels, pred, **kw),
            "macro_recall": skm.recall_score(labels, pred, **kw)}


def test_hand_built_values():
    m = classification_metrics(HAND_SCORES, HAND_LABELS, 3)
    # cm = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]: P = (1, 1/2, 1/2), R = (2/3, 1/2, 1), F1 = (.8, .5, 2/3)
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] == 1.0  # top-min(5, 3)
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["mean_class_acc"] == pytest.approx(m["macro_recall"])
    assert (m["num_samples"], m["num_classes_averaged"], m["num_classes_in_labels"]) == (6, 3, 3)
    assert top_k_accuracy(HAND_SCORES, HAND_LABELS, 2) == pytest.approx(5 / 6)
    np.testing.assert_array_equal(confusion_matrix(HAND_SCORES.argmax(1), HAND_LABELS, 3),
                                  [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_classes_absent_from_labels_and_predictions_are_left_out():
    # 6 classes; labels use {0, 1}, predictions {0, 1, 3}; 2, 4, 5 occur nowhere
    labels, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 3])
    scores = np.eye(6)[pred]
    m = classification_metrics(scores, labels, 6)
    # class 0: P 1, R 1/2, F1 2/3; class 1: P R F1 1/2; class 3 (predicted only): 0, 0, 0
    assert m["num_classes_averaged"] == 3 and m["num_classes_in_labels"] == 2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["macro_precision"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx(1 / 3)
    assert m["mean_class_acc"] == pytest.approx(0.5)  # recall over classes 0 and 1 only
    # scikit-learn's labels=None (the union) agrees; labels=range(6) would average in 3 zeros
    assert m == pytest.approx({**m, **_sklearn_macro(labels, pred, None)})
    assert skm.f1_score(labels, pred, labels=range(6), average="macro", zero_division=0) \
        == pytest.approx(m["macro_f1"] / 2)


@pytest.mark.parametrize("num_classes,num_samples", [
    (3, 40), (5, 7), (7, 300), (12, 9), (40, 25), (155, 120), (155, 2000)])
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_sklearn(num_classes, num_samples, seed):
    scores, labels = _random_case(num_classes, num_samples, seed)
    pred = scores.argmax(1)
    m = classification_metrics(scores, labels, num_classes)
    union = np.union1d(labels, pred)
    assert m["top1"] == pytest.approx(skm.accuracy_score(labels, pred))
    for name, value in _sklearn_macro(labels, pred, union).items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k >= C, and y_pred classes missing from y_true
        top5 = skm.top_k_accuracy_score(labels, scores, k=min(5, num_classes),
                                        labels=np.arange(num_classes))
        balanced = skm.balanced_accuracy_score(labels, pred)
    assert m["top5"] == pytest.approx(top5)
    assert m["mean_class_acc"] == pytest.approx(balanced)
    assert m["num_classes_averaged"] == len(union)
    assert all(0.0 <= m[k] <= 1.0 for k in METRIC_KEYS)


@pytest.mark.parametrize("num_classes", [3, 10, 155])
def test_every_class_present_matches_labels_range(num_classes):
    scores, labels = _random_case(num_classes, 6 * num_classes, 3, all_present=True)
    m = classification_metrics(scores, labels, num_classes)
    expected = _sklearn_macro(labels, scores.argmax(1), list(range(num_classes)))
    assert {k: m[k] for k in expected} == pytest.approx(expected)
    assert m["num_classes_averaged"] == num_classes


@pytest.mark.parametrize("num_classes", [1, 2, 3, 4])
def test_top5_with_fewer_than_five_classes_is_one(num_classes):
    scores, labels = _random_case(num_classes, 30, 4)
    m = classification_metrics(scores, labels, num_classes)
    assert m["top5"] == 1.0
    assert m["top1"] == pytest.approx(np.mean(scores.argmax(1) == labels))


def test_ties_go_to_the_lower_index_like_argmax():
    labels = np.array([0, 1, 2, 3, 3, 4])
    scores = np.zeros((6, 5))  # a dead model: constant scores
    m = classification_metrics(scores, labels, 5)
    assert m["top1"] == pytest.approx(1 / 6)  # argmax is class 0
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 6)  # ranks 0 and 1
    assert top_k_accuracy(scores, labels, 4) == pytest.approx(5 / 6)


@pytest.mark.parametrize("num_classes,num_samples", [(4, 10), (20, 15), (155, 500)])
def test_confusion_matrix_and_per_class_report_match_sklearn(num_classes, num_samples):
    scores, labels = _random_case(num_classes, num_samples, 5)
    pred = scores.argmax(1)
    cm = confusion_matrix(pred, labels, num_classes)
    assert cm.dtype == np.int64 and cm.shape == (num_classes, num_classes)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, pred,
                                                           labels=range(num_classes)))
    names = [f"A{i:03d}" for i in range(num_classes)]
    report = per_class_report(cm, names)
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=range(num_classes),
                                                     average=None, zero_division=0)
    assert [row["class_name"] for row in report] == names
    np.testing.assert_allclose([row["precision"] for row in report], p)
    np.testing.assert_allclose([row["recall"] for row in report], r)
    np.testing.assert_allclose([row["f1"] for row in report], f)
    np.testing.assert_array_equal([row["support"] for row in report], s)
    assert sum(row["predicted"] for row in report) == num_samples


def test_torch_inputs_any_float_dtype():
    scores, labels = _random_case(9, 64, 6)
    expected = classification_metrics(scores.astype(np.float32), labels, 9)
    assert classification_metrics(torch.from_numpy(scores).float(), torch.from_numpy(labels),
                                  9) == pytest.approx(expected)
    as_bf16 = torch.from_numpy(scores).to(torch.bfloat16)
    assert classification_metrics(as_bf16, torch.from_numpy(labels), 9)["num_samples"] == 64


def test_values_are_plain_json_numbers():
    m = classification_metrics(HAND_SCORES, HAND_LABELS, 3)
    assert all(type(v) in (int, float) for v in m.values())
    assert json.loads(json.dumps(m)) == m


@pytest.mark.parametrize("scores,labels,match", [
    (np.zeros((2, 3)), np.array([0, 3]), "out of range"),
    (np.zeros((2, 3)), np.array([-1, 0]), "out of range"),
    (np.zeros((2, 3)), np.array([0.0, 1.0]), "integers"),
    (np.zeros((2, 4)), np.array([0, 1]), "shape"),
    (np.zeros((3, 3)), np.array([0, 1]), "shape"),
    (np.array([[0.0, np.nan, 1.0], [1, 2, 3]]), np.array([0, 1]), "NaN"),
    (np.zeros((0, 3)), np.zeros(0, np.int64), "zero samples"),
])
def test_bad_inputs_raise(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(scores, labels, 3)


def test_streaming_equals_one_shot():
    scores, labels = _random_case(17, 203, 7)
    meter = StreamingMetrics(17)
    bounds = [0, 1, 1, 50, 64, 140, 203]  # uneven batches, one empty
    for start, stop in zip(bounds[:-1], bounds[1:]):
        batch = torch.from_numpy(scores[start:stop]).float()
        meter.update(batch, torch.from_numpy(labels[start:stop]),
                     keys=[f"clip{i}" for i in range(start, stop)])
    assert len(meter) == 203
    one_shot = classification_metrics(scores.astype(np.float32), labels, 17)
    assert meter.compute() == one_shot
    assert meter.gather().compute() == one_shot  # one process: nothing to gather or drop
    np.testing.assert_array_equal(meter.confusion_matrix(),
                                  confusion_matrix(scores.argmax(1), labels, 17))
    assert meter.arrays()[2] == [f"clip{i}" for i in range(203)]


def test_gather_drops_repeated_keys_and_guards_misuse():
    meter = StreamingMetrics(3)
    meter.update(HAND_SCORES, HAND_LABELS, keys=list("abcdef"))
    meter.update(HAND_SCORES[:2], HAND_LABELS[:2], keys=["a", "b"])  # DistributedSampler padding
    assert len(meter) == 8
    assert meter.gather().compute() == classification_metrics(HAND_SCORES, HAND_LABELS, 3)
    with pytest.raises(RuntimeError):
        meter.update(HAND_SCORES, HAND_LABELS, keys=list("abcdef"))
    with pytest.raises(RuntimeError):
        meter.gather()
    meter.reset()
    meter.update(HAND_SCORES[:1], [0], keys=["a"])
    meter.update(HAND_SCORES[:1], [1], keys=["a"])
    with pytest.raises(ValueError, match="labels"):
        meter.gather()
    with pytest.raises(ValueError, match="every batch"):
        meter.update(HAND_SCORES[:1], [0])


@pytest.mark.slow
def test_gather_across_two_processes(gathered):
    data = two_ranks.make_data()
    expected = classification_metrics(data["scores"], data["labels"], two_ranks.NUM_CLASSES)
    for result in gathered:  # every rank holds the whole set, in rank order, repeat dropped
        assert result["keys"] == [f"clip{i}" for i in range(two_ranks.NUM_CLIPS)]
        assert result["labels"] == data["labels"].tolist()
        np.testing.assert_array_equal(np.array(result["scores"], np.float32), data["scores"])
        assert result["metrics"] == pytest.approx(expected)
