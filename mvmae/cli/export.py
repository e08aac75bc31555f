"""``mvmae export``: a trained classifier as an ONNX or TorchScript file (``mvmae.eval.export``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mvmae.cli.base import handle_errors, main


@main.command("export")
# No exists=True: a missing file is the one-line error of load_checkpoint, as any other bad checkpoint.
@click.option("--ckpt", "ckpt", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Classifier checkpoint from `mvmae train` (best.pt or last.pt).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The file to write (model.onnx, model.ts), atomically.")
@click.option("--format", "format_", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="ONNX (onnxruntime and friends) or TorchScript (torch.jit.load).")
@click.option("--opset", type=click.IntRange(min=14), default=17, show_default=True, help="ONNX opset.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the written file on random inputs and compare its logits with PyTorch's "
                   "(fails past 1e-4; ONNX: skipped with a warning without onnxruntime).")
@handle_errors
def export(ckpt: Path, out: Path, format_: str, opset: int, check: bool) -> None:
    """Export a trained classifier to one file: its forward as trained, preprocessing included.

    \b
    Example:
      mvmae export --ckpt runs/train/best.pt --out model.onnx
      mvmae export --ckpt runs/train/best.pt --out model.ts --format torchscript

    \b
    Inputs (batch dimension B free; T = segments x segment frames, h = w = mv_size,
    H = W = iframe_size, S = segments: the checkpoint's clip config):
      mv       float32 (B, T, 2, h, w)  (dx, dy) px per frame, as the reader cuts a clip
      valid    bool    (B, T, h, w)     False where a cell has no vector
      iframes  uint8   (B, S, 3, H, W)  RGB, one I-frame per segment
    Output: logits float32 (B, num_classes).

    Only the inputs the model uses are inputs: a motion-only classifier (--inputs mv) takes mv
    and valid, no iframes. Camera compensation, normalisation, tokenization and the I-frames'
    standardisation are in the graph; a classifier trained with camera 'affine' takes
    mv_compensated instead of mv, from the numpy compensate_camera written beside the file
    (NAME.preprocess.py). The I/O names, shapes and dtypes, class names, clip config and token
    spec are in the file's metadata (ONNX metadata_props; TorchScript extra file mvmae.json).
    """
    from mvmae.eval.export import ExportConfig, export_classifier

    result = export_classifier(ExportConfig(ckpt=str(ckpt), out=str(out), format=format_, opset=opset, check=check))
    for spec in json.loads(result.metadata["mvmae.inputs"]) + json.loads(result.metadata["mvmae.outputs"]):
        shape = ", ".join(map(str, spec["shape"]))
        click.echo(f"{spec['name']:<15} {spec['dtype']:<8} ({shape})")
    if result.max_abs_diff is not None:
        click.echo(f"checked: max |logits - PyTorch's| = {result.max_abs_diff:.2e} on random inputs (batch 3)")
    if result.preprocess is not None:
        click.echo(f"preprocessing outside the graph (camera 'affine'): {result.preprocess}")
    click.echo(f"{format_} -> {result.path}")
