"""``mvmae eval`` end to end: a classifier trained on real shards, evaluated single-view and
multi-view (2 clips x 2 crops); the report's numbers agree with its own predictions.csv, with
scikit-learn, with the shards' labels and with the training run's validation."""

from __future__ import annotations

import csv
import gc
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score

from mvmae.eval.metrics import METRIC_KEYS
from mvmae.shards.reader import iter_samples
from synth_data import EXTRACT_WORKERS, brace

# 4 classes x 8 clips of 48 frames, half in val: 16 train and 16 val videos in shards of 4.
# 48 frames leave room for 2 distinct 32-frame clips per video in the multi-view run.
NUM_CLASSES, CLIPS_PER_CLASS, NUM_FRAMES, SHARD_SIZE = 4, 8, 48, 4
NUM_VAL = NUM_CLASSES * CLIPS_PER_CLASS // 2

# A micro Motion encoder over 2 segments of 16 frames (8 x 8 cells, tubelets of 4 frames), a few
# epochs: the numbers need not be good, only real and consistent.
TRAIN = {
    "model": {"inputs": "mv", "motion_size": "micro", "num_segments": 2, "dim": 32, "temporal_heads": 4},
    "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
    "epochs": 8, "phase1_epochs": 0, "batch_size": 4, "workers": 0, "lr": 2e-3,
    "label_smoothing": 0.0, "flip_prob": 0.0, "crop_area": [0.8, 1.0],
}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A synthetic dataset in shards and a classifier trained on it by ``Finetuner``:
    ``{"val": brace pattern of the 3 val shards, "run": the training folder (best.pt, last.pt,
    metrics.jsonl), "labels": {val key: label} read from the shards}``."""
    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.job.job import JobConfig, run_job
    from mvmae.synth import SynthConfig, make_dataset
    from mvmae.train.config import load_config
    from mvmae.train.finetune import FinetuneConfig, Finetuner

    root = tmp_path_factory.mktemp("evaluate")
    lists = make_dataset(root / "data", SynthConfig(num_classes=NUM_CLASSES, clips_per_class=CLIPS_PER_CLASS,
                                                    num_frames=NUM_FRAMES, val_ratio=0.5))
    shards = root / "shards"
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=lists[split], out_dir=shards, split=split, shard_size=SHARD_SIZE,
                                    workers=EXTRACT_WORKERS))
        assert summary.num_failed == 0 and not summary.shards_failed, summary
    gc.collect()  # synth_data.EXTRACT_WORKERS
    data = {"train": [brace(shards, "train")], "val": [brace(shards, "val")]}
    cfg = load_config(FinetuneConfig, None, {**TRAIN, **data, "out": str(root / "run")})
    Finetuner(cfg, StreamingMetrics).run()
    labels = {s.key: s.label for s in iter_samples(data["val"], with_iframes=False)}
    assert len(labels) == NUM_VAL
    return {"val": data["val"][0], "run": root / "run", "labels": labels}


@pytest.fixture(scope="module")
def reports(trained, cli_runner, tmp_path_factory) -> dict:
    """``mvmae eval`` of best.pt: ``{"single": (folder, Result), "multi": (folder, Result)}``,
    the default single view and ``--clips 2 --crops 2``."""
    from mvmae.cli import main

    out = tmp_path_factory.mktemp("reports")
    runs = {"single": [], "multi": ["--clips", "2", "--crops", "2", "--workers", "0"]}
    found = {}
    for name, flags in runs.items():
        folder = out / name
        result = cli_runner.invoke(main, ["eval", "--ckpt", str(trained["run"] / "best.pt"),
                                          "--data", trained["val"], "--out", str(folder), *flags])
        assert result.exit_code == 0, f"{result.output}\n{result.stderr}\n{result.exception!r}"
        found[name] = (folder, result)
    return found


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def read_predictions(folder: Path) -> list[dict]:
    with open(folder / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_single_view_metrics(reports, trained):
    folder, result = reports["single"]
    metrics = read_metrics(folder)
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
        assert metrics[key] == metrics[f"single_view_{key}"]
    assert metrics["views"] == 1 and (metrics["clips"], metrics["crops"]) == (1, 1)
    assert metrics["num_samples"] == NUM_VAL and metrics["num_classes"] == NUM_CLASSES
    assert not any(k.startswith("multi_view_") for k in metrics)
    assert f"{NUM_VAL} videos, 1 view(s) per video" in result.stdout
    assert f"{metrics['top1']:>13.2%}" in result.stdout


def test_single_view_reproduces_the_training_validation(reports, trained):
    """Training validates on the same centred clip and crop: ``mvmae eval`` of best.pt gives the
    numbers logged for the best epoch."""
    from mvmae.train import checkpoint as ckpt

    best_epoch = ckpt.load_checkpoint(trained["run"] / "best.pt")[ckpt.BEST_METRIC]["epoch"]
    lines = (trained["run"] / "metrics.jsonl").read_text().splitlines()
    (logged,) = [r for r in map(json.loads, lines) if r["split"] == "val" and r["epoch"] == best_epoch]
    metrics = read_metrics(reports["single"][0])
    for key in (*METRIC_KEYS, "num_samples"):
        assert metrics[key] == pytest.approx(logged[key], abs=1e-6), key


def test_multi_view_metrics(reports):
    folder, result = reports["multi"]
    metrics = read_metrics(folder)
    assert metrics["views"] == 4 and (metrics["clips"], metrics["crops"]) == (2, 2)
    for key in METRIC_KEYS:
        for name in (key, f"single_view_{key}", f"multi_view_{key}"):
            assert 0.0 <= metrics[name] <= 1.0, name
        assert metrics[key] == metrics[f"multi_view_{key}"]  # the headline numbers are multi-view
    assert metrics["multi_view_num_samples"] == metrics["single_view_num_samples"] == NUM_VAL
    assert f"{NUM_VAL} videos, 4 view(s) per video" in result.stdout


@pytest.mark.parametrize("run", ["single", "multi"])
def test_metrics_agree_with_predictions(reports, trained, run):
    """predictions.csv has one row per val video with its true label; top-1 recomputed from it,
    and macro F1 / precision / recall and mean class accuracy from scikit-learn on its columns,
    equal metrics.json; per_video.jsonl's scores give the same predictions; the confusion
    matrix counts the same pairs."""
    folder, _ = reports[run]
    metrics = read_metrics(folder)
    rows = read_predictions(folder)
    assert sorted(r["key"] for r in rows) == sorted(trained["labels"])
    labels = np.array([int(r["label"]) for r in rows])
    preds = np.array([int(r["pred"]) for r in rows])
    assert [trained["labels"][r["key"]] for r in rows] == labels.tolist()
    assert [int(r["correct"]) for r in rows] == (labels == preds).astype(int).tolist()
    assert len(set(preds)) > 1, "a model that predicts one class makes these checks trivial"
    assert metrics["top1"] == pytest.approx(np.mean([int(r["correct"]) for r in rows]), abs=1e-12)
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0))
    assert metrics["macro_precision"] == pytest.approx(
        precision_score(labels, preds, average="macro", zero_division=0))
    assert metrics["macro_recall"] == pytest.approx(
        recall_score(labels, preds, average="macro", zero_division=0))
    assert metrics["mean_class_acc"] == pytest.approx(balanced_accuracy_score(labels, preds))
    top5 = [list(map(int, r["top5"].split())) for r in rows]
    assert all(len(t) == NUM_CLASSES and t[0] == p for t, p in zip(top5, preds))
    assert metrics["top5"] == 1.0  # 4 classes: every label is among the top 5

    videos = [json.loads(line) for line in (folder / "per_video.jsonl").read_text().splitlines()]
    assert [v["key"] for v in videos] == [r["key"] for r in rows]
    assert [int(np.argmax(v["scores"])) for v in videos] == preds.tolist()
    if run == "multi":  # mean of softmax over the views: probabilities
        assert all(sum(v["scores"]) == pytest.approx(1.0, abs=1e-5) for v in videos)

    with open(folder / "confusion_matrix.csv", newline="") as fh:
        table = list(csv.reader(fh))
    counts = np.array([[int(c) for c in row[1:]] for row in table[1:]])
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
    np.add.at(expected, (labels, preds), 1)
    assert (counts == expected).all()
    assert np.trace(counts) / counts.sum() == pytest.approx(metrics["top1"])


@pytest.mark.parametrize("run", ["single", "multi"])
def test_confusion_matrix_png_is_valid(reports, run):
    path = reports[run][0] / "confusion_matrix.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()  # checks the chunks and their CRCs
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and min(image.size) >= 100
        assert np.asarray(image.convert("L")).std() > 0  # something is drawn


def damage_one_sample(src: Path, dst: Path) -> str:
    """Copy shard ``src`` to ``dst`` with its first sample's ``cls`` member changed (its CRC32 in
    the record no longer matches: a sample no clip can be cut from); returns that sample's key."""
    import io
    import tarfile

    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        members = tin.getmembers()
        key = members[0].name.split(".")[0]
        for member in members:
            data = tin.extractfile(member).read()
            if member.name == f"{key}.cls":
                data = b"7" if data != b"7" else b"8"
            tout.addfile(member, io.BytesIO(data))
    return key


@pytest.fixture(scope="module")
def damaged_val(trained, tmp_path_factory) -> dict:
    """The val shards with one sample damaged: ``{"urls": [...], "key": the damaged sample}``."""
    val = sorted(Path(trained["val"]).parent.glob("val-[0-9]*.tar"))
    out = tmp_path_factory.mktemp("damaged")
    key = damage_one_sample(val[0], out / val[0].name)
    return {"urls": [str(out / val[0].name)] + [str(p) for p in val[1:]], "key": key}


def test_eval_skips_counts_and_names_a_sample_it_cannot_use(trained, damaged_val, cli_runner, tmp_path):
    """As training: the damaged sample is left out, counted in metrics.json and named in a
    warning; the run completes. --max-skip-ratio is the opt-in limit."""
    from mvmae.cli import main

    args = ["eval", "--ckpt", str(trained["run"] / "best.pt"), "--workers", "0", "--out", str(tmp_path / "e")]
    for url in damaged_val["urls"]:
        args += ["--data", url]
    result = cli_runner.invoke(main, args)
    assert result.exit_code == 0, f"{result.output}\n{result.stderr}\n{result.exception!r}"
    metrics = read_metrics(tmp_path / "e")
    assert (metrics["num_samples"], metrics["num_samples_skipped"]) == (NUM_VAL - 1, 1)
    assert f"sample {damaged_val['key']!r}" in result.stderr and "checksum mismatch" in result.stderr
    assert "1 sample(s) skipped" in result.stdout


def test_validation_skips_a_sample_it_cannot_use(trained, damaged_val, tmp_path):
    """``Finetuner.validate`` over the damaged val shards: the epoch's metrics, the sample
    counted as training counts its skips (``num_samples_skipped``), not an error."""
    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.train.config import load_config
    from mvmae.train.finetune import FinetuneConfig, Finetuner

    train = [str(Path(trained["val"]).parent / "train-{000000..000003}.tar")]
    cfg = load_config(FinetuneConfig, None, {**TRAIN, "epochs": 1, "train": train, "val": damaged_val["urls"],
                                             "out": str(tmp_path / "run")})
    finetuner = Finetuner(cfg, StreamingMetrics)
    try:
        metrics = finetuner.validate(0)
    finally:
        finetuner.close()
    counts = (metrics["num_samples"], metrics["num_samples_skipped"], metrics["num_shards_skipped"])
    assert counts == (NUM_VAL - 1, 1, 0)
