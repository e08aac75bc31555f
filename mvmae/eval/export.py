"""``mvmae export``: a trained classifier as one ONNX or TorchScript file, preprocessing included.

The file holds the model's ``forward`` as trained (EMA weights when the run kept them), with only
the inputs its ``inputs`` setting uses: ``mv`` and ``valid`` for a motion-only classifier
(``--inputs mv``: no ``iframes`` input), ``iframes`` alone for ``--inputs iframe``, all three for
``both``. What happens inside the model is in the graph: camera compensation (median or none),
normalisation and tubelet tokenization of the field, the I-frames' ``/ 255`` and ImageNet
standardisation. A classifier trained with ``camera: affine`` is the exception: its least-squares
fit (a 3x3 eigenvalue test and solve) has no ONNX form, so its graph takes the field already
compensated (input ``mv_compensated``) and ``mvmae.eval.preprocess.compensate_camera`` (numpy
only) is written beside the file as ``<name>.preprocess.py``.

What the graph expects is what ``mvmae eval`` feeds the model: a clip as the reader cuts it from a
shard (``mvmae.dataloader.clip_loader(urls, ClipConfig(**clip), train=False)`` with ``clip`` the
``mvmae.clip`` entry of the metadata). The I/O names, shapes and dtypes, the class names, the clip
config, the token spec and the model config are in the file's metadata (``METADATA_KEYS``): ONNX
``metadata_props``, TorchScript ``_extra_files["mvmae.json"]``. The batch dimension is dynamic.

``export_classifier`` checks the file it wrote: the runtime that will read it (onnxruntime,
``torch.jit.load``) runs it on random inputs and the largest absolute difference of its logits
from PyTorch's must be at most ``TOLERANCE``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvmae import __version__
from mvmae.files import atomic_write_bytes
from mvmae.shards.fetch import MissingExtraError
from mvmae.train import checkpoint as ckpt
from mvmae.train.finetune import load_classifier
from mvmae.train.model import classifier_clip

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
# Max abs difference of float32 logits, exported runtime vs PyTorch, that the export check and the
# parity tests accept (measured on the test checkpoints: below 1e-6).
TOLERANCE = 1e-4
OPSET = 17
OUTPUT = "logits"
# The metadata entries, each a JSON string.
METADATA_KEYS = ("mvmae.version", "mvmae.inputs", "mvmae.outputs", "mvmae.classes", "mvmae.clip",
                 "mvmae.tokens", "mvmae.model", "mvmae.extraction", "mvmae.preprocess", "mvmae.tolerance")
TORCHSCRIPT_METADATA = "mvmae.json"


@dataclass
class ExportConfig:
    """ckpt: a classifier checkpoint of ``mvmae train``; out: the file to write; format: ``onnx``
    or ``torchscript``; opset: the ONNX opset; check: run the written file and compare its logits
    with PyTorch's (onnxruntime for ONNX: skipped with a warning when it is not installed)."""

    ckpt: str
    out: str
    format: str = "onnx"
    opset: int = OPSET
    check: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.opset < 14:
            raise ValueError(f"opset must be >= 14 (scaled dot-product attention), got {self.opset}")


@dataclass
class ExportResult:
    """path: the file written; metadata: its metadata (key -> JSON string); max_abs_diff: of the
    check's logits (None: not checked); preprocess: the numpy preprocessing written beside it."""

    path: Path
    metadata: dict[str, str]
    max_abs_diff: float | None = None
    preprocess: Path | None = None


class ExportedClassifier(nn.Module):
    """``forward(*inputs)`` in the order of ``input_names`` (a subset of mv, valid, iframes):
    the classifier's logits float32 (B, num_classes); inputs it does not use are not inputs."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.input_names, inputs))
        unused = inputs[0].new_zeros(0)  # never read: the model's inputs setting skips that path
        return self.model(given.get("mv", unused), given.get("valid", unused), given.get("iframes", unused))


def io_spec(model_cfg, tokens, num_classes: int) -> tuple[list[dict], list[dict]]:
    """The graph's inputs and outputs: ``[{"name", "dtype", "shape", "doc"}]``, shapes with
    ``"batch"`` for the dynamic dimension (clip sizes from the classifier's config and token spec)."""
    frames, cells, side = tokens.num_frames * model_cfg.num_segments, tokens.mv_size, tokens.iframe_size
    affine = tokens.camera == "affine"
    field = ("(dx, dy) px per frame, camera-compensated by compensate_camera(mv, valid, 'affine') of the "
             "preprocess file" if affine else "(dx, dy) px per frame as the reader cuts it (compensated inside)")
    inputs = []
    if model_cfg.inputs in ("mv", "both"):
        inputs += [{"name": "mv_compensated" if affine else "mv", "dtype": "float32",
                    "shape": ["batch", frames, 2, cells, cells], "doc": field},
                   {"name": "valid", "dtype": "bool", "shape": ["batch", frames, cells, cells],
                    "doc": "False where a cell has no vector"}]
    if model_cfg.inputs in ("iframe", "both"):
        inputs.append({"name": "iframes", "dtype": "uint8", "shape": ["batch", model_cfg.num_segments, 3, side, side],
                       "doc": "RGB, one I-frame per segment (standardised inside)"})
    outputs = [{"name": OUTPUT, "dtype": "float32", "shape": ["batch", num_classes],
                "doc": "class scores before softmax, in the order of mvmae.classes"}]
    return inputs, outputs


def build_metadata(train_cfg, classes: list[str], extraction: dict) -> dict[str, str]:
    """The file's metadata (``METADATA_KEYS``), every value a JSON string."""
    inputs, outputs = io_spec(train_cfg.model, train_cfg.tokens, len(classes))
    clip = classifier_clip(train_cfg.model, train_cfg.tokens, "center")
    affine = train_cfg.tokens.camera == "affine"
    preprocess = ("mv_compensated = compensate_camera(mv, valid, 'affine') of the .preprocess.py file beside "
                  "the model, on the clip's mv and valid; the rest is in the graph" if affine else
                  "none outside the graph: camera compensation, normalisation, tokenization and I-frame "
                  "standardisation are in it")
    values = {"mvmae.version": __version__, "mvmae.inputs": inputs, "mvmae.outputs": outputs,
              "mvmae.classes": classes, "mvmae.clip": dataclasses.asdict(clip),
              "mvmae.tokens": train_cfg.tokens.to_dict(), "mvmae.model": dataclasses.asdict(train_cfg.model),
              "mvmae.extraction": extraction, "mvmae.preprocess": preprocess, "mvmae.tolerance": TOLERANCE}
    return {key: json.dumps(values[key]) for key in METADATA_KEYS}


def example_inputs(inputs: list[dict], batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Random tensors of the ``io_spec`` inputs with ``batch`` rows: fields of a few px per frame,
    a third of the cells invalid (0 there, as the reader gives them), random I-frames."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {spec["name"]: [batch, *spec["shape"][1:]] for spec in inputs}
    tensors = {}
    if "valid" in shapes:
        tensors["valid"] = torch.rand(shapes["valid"], generator=generator) > 1 / 3
        for name in ("mv", "mv_compensated"):
            if name in shapes:
                field = torch.randn(shapes[name], generator=generator) * 3  # (B, T, 2, h, w)
                tensors[name] = field * tensors["valid"][:, :, None]
    if "iframes" in shapes:
        tensors["iframes"] = torch.randint(0, 256, shapes["iframes"], dtype=torch.uint8, generator=generator)
    return [tensors[spec["name"]] for spec in inputs]


def prepare_model(path: str | Path) -> tuple[ExportedClassifier, dict[str, str]]:
    """(the module to export, its metadata) of checkpoint ``path``. For ``camera: affine`` the
    module's compensation is ``none`` (it only zeroes invalid cells): ``mv_compensated`` comes
    compensated."""
    model, classes, train_cfg = load_classifier(path, "cpu")
    extraction = ckpt.load_checkpoint(path)[ckpt.EXTRA].get("extraction") or {}
    metadata = build_metadata(train_cfg, classes, extraction)
    names = tuple(spec["name"] for spec in json.loads(metadata["mvmae.inputs"]))
    if train_cfg.tokens.camera == "affine":
        model.spec = dataclasses.replace(train_cfg.tokens, camera="none")
    # eval() on the wrapper too: the exporter restores the wrapper's mode, recursively, afterwards.
    return ExportedClassifier(model, tuple("mv" if n == "mv_compensated" else n for n in names)).eval(), metadata


def onnx_bytes(module: nn.Module, inputs: list[torch.Tensor], names: list[str], metadata: dict[str, str],
               opset: int = OPSET) -> bytes:
    """``module`` traced on ``inputs`` as an ONNX model (batch dimension dynamic) with
    ``metadata`` in its ``metadata_props``. The TorchScript-based exporter: the torch.export-based
    default needs onnxscript, and the graph has no data-dependent control flow to need it."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingExtraError("ONNX export needs onnx: pip install 'mvmae[export]'") from exc
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The shape checks the tracer sees are constant for one checkpoint's clips: the warnings are noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own: it is the legacy one
        torch.onnx.export(module, tuple(inputs), buffer, dynamo=False, input_names=names, output_names=[OUTPUT],
                          dynamic_axes={name: {0: "batch"} for name in [*names, OUTPUT]}, opset_version=opset)
    proto = onnx.load_model_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = f"mvmae {__version__} classifier; inputs, classes and clip spec in metadata_props"
    return proto.SerializeToString()


def torchscript_bytes(module: nn.Module, inputs: list[torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``module`` traced on ``inputs`` (``torch.jit.trace``: the batch dimension stays free) as a
    TorchScript file; ``metadata`` (decoded) in ``_extra_files["mvmae.json"]``."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14, still works
        traced = torch.jit.trace(module, tuple(inputs))
        buffer = io.BytesIO()
        extra = {TORCHSCRIPT_METADATA: json.dumps({key: json.loads(value) for key, value in metadata.items()})}
        torch.jit.save(traced, buffer, _extra_files=extra)
    return buffer.getvalue()


def run_exported(path: str | Path, format: str, inputs: list[torch.Tensor]) -> np.ndarray:
    """The logits float32 (B, num_classes) of the exported file ``path`` on ``inputs`` (in the
    graph's input order), by the runtime that reads it: onnxruntime (CPU) or ``torch.jit.load``."""
    if format == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")(*inputs).numpy()
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("running an ONNX export needs onnxruntime: pip install 'mvmae[export]'") from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {spec.name: tensor.numpy() for spec, tensor in zip(session.get_inputs(), inputs)}
    return session.run([OUTPUT], feed)[0]


def export_classifier(cfg: ExportConfig) -> ExportResult:
    """Write checkpoint ``cfg.ckpt`` as ``cfg.out`` (atomically), then check it (module doc).
    Raises ``CheckpointError`` / ``ValueError`` naming a file that is no classifier checkpoint,
    ``WriteError`` when ``cfg.out`` cannot be written, ``ValueError`` when the check fails (the
    file is then removed)."""
    module, metadata = prepare_model(cfg.ckpt)
    specs = json.loads(metadata["mvmae.inputs"])
    names = [spec["name"] for spec in specs]
    traced_on = example_inputs(specs, batch=2)
    if cfg.format == "onnx":
        data = onnx_bytes(module, traced_on, names, metadata, cfg.opset)
    else:
        data = torchscript_bytes(module, traced_on, metadata)
    out = Path(cfg.out)
    atomic_write_bytes(out, data)
    result = ExportResult(out, metadata)
    if "mv_compensated" in names:
        from mvmae.eval import preprocess

        result.preprocess = out.with_suffix(".preprocess.py")
        atomic_write_bytes(result.preprocess, Path(preprocess.__file__).read_bytes())
    if cfg.check:
        result.max_abs_diff = _check(out, cfg.format, module, specs)
    return result


def _check(out: Path, format: str, module: nn.Module, specs: list[dict]) -> float | None:
    """Max abs difference of ``out``'s logits from ``module``'s on random inputs of another batch
    size than the trace's (the batch dimension must be free); ValueError past ``TOLERANCE``."""
    inputs = example_inputs(specs, batch=3, seed=1)
    try:
        logits = run_exported(out, format, inputs)
    except MissingExtraError as exc:
        log.warning(f"{out}: not checked ({exc})")
        return None
    with torch.no_grad():
        expected = module(*inputs).numpy()
    diff = float(np.abs(logits - expected).max())
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)
        raise ValueError(f"{out}: the exported logits differ from PyTorch's by {diff:.3g} (> {TOLERANCE}); "
                         f"removed")
    return diff
