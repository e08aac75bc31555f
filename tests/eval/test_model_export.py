"""``mvmae export``: classifiers trained on real shards, exported by the command to ONNX and
TorchScript, run by onnxruntime and ``torch.jit.load`` on clips read from those shards, against
the PyTorch model as trained. Tolerance: max abs difference of float32 logits <= 1e-4
(``mvmae.eval.export.TOLERANCE``; measured below 1e-6)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import needs
import synth_data

from mvmae.cli import main
from mvmae.dataloader import ClipConfig, clip_loader
from mvmae.eval.export import METADATA_KEYS, TOLERANCE, TORCHSCRIPT_METADATA
from mvmae.train.finetune import load_classifier

ort = needs.extra("onnxruntime")  # the `test` extra installs it; missing under CI: a failure
needs.extra("onnx")

README = Path(__file__).resolve().parents[2] / "README.md"
BASE = {
    "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
    "epochs": 1, "phase1_epochs": 0, "batch_size": 4, "workers": 0, "lr": 1e-3, "warmup_epochs": 0,
    "label_smoothing": 0.0, "flip_prob": 0.0, "crop_area": [0.8, 1.0],
}
MICRO = {"motion_size": "micro", "num_segments": 2, "dim": 32, "temporal_heads": 4}
# Both paths (a resnet18 Context encoder), motion only (no iframes input), and the 3D CNN
# baseline over a field compensated by the affine camera model (preprocessing outside the graph).
MODELS = {
    "both": {"model": {**MICRO, "inputs": "both", "context_model": "resnet18"}},
    "mv": {"model": {**MICRO, "inputs": "mv", "dptam": True}},
    "cnn3d_affine": {"model": {"arch": "cnn3d", "inputs": "mv", "cnn_width": 8, "num_segments": 2},
                     "tokens": {**BASE["tokens"], "camera": "affine"}},
}

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


def ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.stderr}\n{result.exception!r}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The synthetic shards (tests/synth_data.py) and a checkpoint per MODELS entry, each trained
    for an epoch on them."""
    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.train.config import load_config
    from mvmae.train.finetune import FinetuneConfig, Finetuner

    shards = synth_data.synth_shards(tmp_path_factory)
    ckpts = {}
    for name, options in MODELS.items():
        run = tmp_path_factory.mktemp("export") / name
        values = {**BASE, **options, "train": [shards["train"]], "out": str(run)}
        Finetuner(load_config(FinetuneConfig, None, values), StreamingMetrics).run()
        ckpts[name] = run / "last.pt"
    return {**shards, "ckpt": ckpts}


def export(cli_runner, ckpt: Path, out: Path, *flags: str) -> Path:
    ok(cli_runner.invoke(main, ["export", "--ckpt", str(ckpt), "--out", str(out), *flags]))
    return out


def shard_batches(trained: dict, clip: dict) -> list[dict]:
    """Every sample of the train and val shards once, cut as ``mvmae eval`` cuts them, in batches
    of 5 (the last one of 1: the batch dimension is free)."""
    loader = clip_loader([trained["train"], trained["val"]], ClipConfig(**clip), batch_size=5, train=False,
                         workers=0)
    batches = list(loader)
    assert [len(b["key"]) for b in batches] == [5, 5, 5, 1]
    return batches


def pytorch_logits(ckpt: Path, batch: dict) -> np.ndarray:
    model, _, _ = load_classifier(ckpt)
    with torch.no_grad():
        return model(batch["mv"], batch["valid"], batch["iframes"]).numpy()


def onnx_metadata(session) -> dict:
    return {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}


@pytest.mark.parametrize("name", ["both", "mv"])
def test_onnx_matches_pytorch_on_shard_clips(trained, cli_runner, tmp_path, name):
    path = export(cli_runner, trained["ckpt"][name], tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = onnx_metadata(session)
    assert set(meta) == set(METADATA_KEYS)
    _, classes, cfg = load_classifier(trained["ckpt"][name])
    assert meta["mvmae.classes"] == classes and meta["mvmae.tokens"] == cfg.tokens.to_dict()
    expected = {"both": ["mv", "valid", "iframes"], "mv": ["mv", "valid"]}[name]  # motion only: no iframes
    graph_inputs = session.get_inputs()
    assert [i.name for i in graph_inputs] == [s["name"] for s in meta["mvmae.inputs"]] == expected
    onnx_types = {"float32": "tensor(float)", "bool": "tensor(bool)", "uint8": "tensor(uint8)"}
    for graph, spec in zip(graph_inputs + session.get_outputs(), meta["mvmae.inputs"] + meta["mvmae.outputs"]):
        assert graph.shape == spec["shape"] and graph.type == onnx_types[spec["dtype"]]
    assert meta["mvmae.outputs"][0]["shape"] == ["batch", len(classes)]
    worst = 0.0
    for batch in shard_batches(trained, meta["mvmae.clip"]):
        feed = {n: batch[n].numpy() for n in expected}
        assert {n: (list(a.shape[1:]), str(a.dtype)) for n, a in feed.items()} == {
            s["name"]: (s["shape"][1:], s["dtype"]) for s in meta["mvmae.inputs"]}
        logits = session.run(["logits"], feed)[0]
        reference = pytorch_logits(trained["ckpt"][name], batch)
        worst = max(worst, float(np.abs(logits - reference).max()))
        assert (logits.argmax(1) == reference.argmax(1)).all()
    assert worst <= TOLERANCE
    print(f"onnx {name}: max abs logit difference {worst:.2e}")


@pytest.mark.parametrize("name", ["both", "mv"])
def test_torchscript_matches_pytorch_on_shard_clips(trained, cli_runner, tmp_path, name):
    path = export(cli_runner, trained["ckpt"][name], tmp_path / "model.ts", "--format", "torchscript")
    extra = {TORCHSCRIPT_METADATA: ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_METADATA])
    assert set(meta) == set(METADATA_KEYS)
    names = [s["name"] for s in meta["mvmae.inputs"]]
    worst = 0.0
    for batch in shard_batches(trained, meta["mvmae.clip"]):
        with torch.no_grad():
            logits = module(*(batch[n] for n in names)).numpy()
        worst = max(worst, float(np.abs(logits - pytorch_logits(trained["ckpt"][name], batch)).max()))
    assert worst <= TOLERANCE
    print(f"torchscript {name}: max abs logit difference {worst:.2e}")


def test_affine_camera_is_compensated_by_the_numpy_file_beside_the_model(trained, cli_runner, tmp_path):
    """The affine fit does not export: the graph takes ``mv_compensated`` from the numpy
    ``compensate_camera`` written beside it, and the chain matches PyTorch on raw clips."""
    path = export(cli_runner, trained["ckpt"]["cnn3d_affine"], tmp_path / "baseline.onnx")
    beside = tmp_path / "baseline.preprocess.py"
    spec = importlib.util.spec_from_file_location("baseline_preprocess", beside)
    preprocess = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preprocess)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = onnx_metadata(session)
    assert [i.name for i in session.get_inputs()] == ["mv_compensated", "valid"]
    assert "compensate_camera(mv, valid, 'affine')" in meta["mvmae.preprocess"]
    from mvmae.train.motion import compensate_camera

    worst = 0.0
    for batch in shard_batches(trained, meta["mvmae.clip"]):
        mv, valid = batch["mv"].numpy(), batch["valid"].numpy()
        compensated = preprocess.compensate_camera(mv, valid, "affine")
        torch_compensated = compensate_camera(batch["mv"], batch["valid"], "affine").numpy()
        assert np.abs(compensated - torch_compensated).max() <= 1e-4
        logits = session.run(["logits"], {"mv_compensated": compensated, "valid": valid})[0]
        worst = max(worst, float(np.abs(logits - pytorch_logits(trained["ckpt"]["cnn3d_affine"], batch)).max()))
    assert worst <= TOLERANCE
    print(f"onnx cnn3d affine: max abs logit difference {worst:.2e}")


def test_readme_example_runs_as_written(trained, cli_runner, tmp_path):
    """The README's onnxruntime example, verbatim, next to a model.onnx and a shards/ folder."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Exporting a classifier"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    export(cli_runner, trained["ckpt"]["both"], tmp_path / "model.onnx")
    os.symlink(trained["shards"], tmp_path / "shards")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    classes = json.loads((Path(trained["shards"]) / "classes.json").read_text())
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == trained["num_val"] and all(line.split()[1] in classes for line in lines)


def test_bad_input_is_one_line_naming_the_file(trained, cli_runner, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    pretraining_like = tmp_path / "other.pt"
    torch.save({"version": 1, "extra": {"kind": "pretrain"}}, pretraining_like)
    for bad in (tmp_path / "missing.pt", text, pretraining_like):
        result = cli_runner.invoke(main, ["export", "--ckpt", str(bad), "--out", str(tmp_path / "m.onnx")])
        assert result.exit_code != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and bad.name in lines[0], result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_help_explains_inputs_and_formats(cli_runner):
    result = cli_runner.invoke(main, ["export", "--help"])
    ok(result)
    for words in ("--format [onnx|torchscript]", "mv       float32 (B, T, 2, h, w)", "no iframes", "metadata_props"):
        assert words in result.output
