"""``mvmae codebook``, ``pretrain``, ``train``, ``eval`` and ``demo``: training on shards."""

from __future__ import annotations

from pathlib import Path

import click

from mvmae.cli.base import UrlsOption, handle_errors, main


@main.command()
@click.argument("shards", nargs=-1, required=True)
@click.option("--size", "size", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Number of codes K; code 0 is reserved for static (near-zero) motion.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Output codebook .npz.")
@click.option("--token", type=click.Choice(["tubelet", "vector"]), default="tubelet", show_default=True,
              help="Cluster whole tubelet vectors, or single (dx, dy) vectors as published MV-MAE.")
@click.option("--frames", "num_frames", type=click.IntRange(min=1), default=16, show_default=True,
              help="Frames per clip (T).")
@click.option("--mv-size", type=click.IntRange(min=1), default=14, show_default=True,
              help="Cells per side of a clip's MV field.")
@click.option("--tubelet", default="2x1", show_default=True,
              help="Token size: frames x cells (2x1: 2 frames of one cell).")
@click.option("--camera", type=click.Choice(["median", "affine", "none"]), default="median",
              show_default=True, help="Camera-motion compensation before tokenizing.")
@click.option("--scale-px", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="px/frame (of the output I-frame) that map to 1.0 in token vectors.")
@click.option("--static-threshold", type=click.FloatRange(min=0), default=0.125, show_default=True,
              help="Mean token vector length (normalised: x --scale-px px/frame) below which a token is "
                   "static (code 0); 0.125 at --scale-px 4 is 0.5 px/frame.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Tokens sampled from the shards for k-means.")
@click.option("--clips-per-video", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def codebook(shards: tuple[str, ...], size: int, out: Path, token: str, num_frames: int, mv_size: int,
             tubelet: str, camera: str, scale_px: float, static_threshold: float, max_tokens: int,
             clips_per_video: int, batch_size: int, workers: int, seed: int) -> None:
    """Learn a discrete codebook of motion tokens from SHARDS (URLs or brace patterns).

    Clips are cut from every sample, camera motion is removed, vectors are normalised and cut
    into tubelet tokens (the token spec is saved in the codebook, so pretraining tokenizes the
    same way); codes 1..K-1 come from mini-batch k-means over the moving tokens, code 0 is static.
    Prints code usage (perplexity, dead codes) and the quantization error. Deterministic for a seed.
    """
    from tqdm import tqdm

    from mvmae.train.codebook import CodebookConfig, build_codebook
    from mvmae.train.tokenizer import TokenSpec

    t, p = _parse_tubelet(tubelet)
    spec = TokenSpec(num_frames=num_frames, mv_size=mv_size, tubelet_frames=t, tubelet_cells=p,
                     camera=camera, scale_px=scale_px)
    config = CodebookConfig(size=size, token=token, static_threshold=static_threshold,
                            max_tokens=max_tokens, seed=seed)
    book = build_codebook(list(shards), spec, config, clips_per_video, batch_size, workers,
                          lambda it: tqdm(it, unit="batch", desc="tokens"))
    book.save(out)
    s = book.stats
    click.echo(f"codebook of {book.size} codes from {s['num_tokens']} tokens (dim {book.token_dim}): "
               f"perplexity {s['perplexity']:.1f} ({s['moving_perplexity']:.1f} over moving tokens), dead codes "
               f"{s['dead_codes']}, static "
               f"{s['static_ratio']:.1%}, quantization error {s['quantization_error']:.3f} -> {out}")


def _parse_tubelet(value: str) -> tuple[int, int]:
    try:
        t, p = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected FRAMESxCELLS (e.g. 2x1), got {value!r}") from None
    return t, p


def _overrides(**values) -> dict:
    """CLI values that were given (None means: keep the YAML or default)."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML with any PretrainConfig field; command-line flags override it.")
@click.option("--train", "train", cls=UrlsOption,
              help="Shard URLs or brace patterns: several after one flag (a shell glob), or the flag repeated.")
@click.option("--codebook", "codebook_path", help="Codebook .npz from `mvmae codebook`.")
@click.option("--masking", type=click.Choice(["random", "tube", "mgm", "mofo", "videoms"]),
              help="Masking strategy [default: mgm].")
@click.option("--mask-ratio", type=float, help="Share of tokens masked [default: 0.9].")
@click.option("--visible-moving-ratio", type=click.FloatRange(0, 1),
              help="Least share of each clip's moving tokens kept visible, whatever the masking: an MV-only "
                   "pretext cannot infer hidden motion from none [default: the strategy's, 0.25 for "
                   "mgm, mofo and videoms, 0 for random and tube].")
@click.option("--model-size", type=click.Choice(["micro", "tiny", "small", "base"]),
              help="Motion encoder size [default: small = 384-d, 12 blocks, 6 heads].")
@click.option("--embed", type=click.Choice(["linear", "conv"]),
              help="Motion encoder token embedding: per token (ViT), or a 3x3x3 convolution over the token grid "
                   "(masked tokens enter it as zeros) [default: conv].")
@click.option("--epochs", type=int, help="Passes over the shards [default: 400].")
@click.option("--warmup-epochs", type=int,
              help="Linear warmup; one longer than the run is cut to a tenth of it, with a warning [default: 20].")
@click.option("--steps-per-epoch", type=int, help="Optimizer steps per epoch from resampled shards (0: one pass; "
              "on several ranks, an equal epoch sized from the shards' manifest).")
@click.option("--batch-size", type=int, help="Clips per step and process [default: 32].")
@click.option("--accum-steps", type=int, help="Gradient accumulation steps [default: 1].")
@click.option("--lr", type=float, help="Peak learning rate [default: 3e-4].")
@click.option("--workers", type=int, help="DataLoader workers per process [default: 2].")
@click.option("--predict", type=click.Choice(["ids", "vectors"]),
              help="Targets: codebook ids (cross-entropy) or token vectors (MSE) [default: ids].")
@click.option("--static-weight", type=float,
              help="Loss weight of masked targets whose code is static (0: left out of the loss) [default: 0].")
@click.option("--norm-targets/--no-norm-targets", default=None,
              help="--predict vectors: standardise each target token over its values [default: off].")
@click.option("--seed", type=int, help="Seed of data order, masks and init [default: 0].")
@click.option("--out", "out", help="Output folder: checkpoints, config.yaml, metrics.jsonl, tensorboard/.")
@click.option("--resume", is_flag=True, default=None,
              help="Continue from OUT/last.pt (from the start if there is none yet) with the same config: "
                   "--config OUT/config.yaml --resume.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model.")
@handle_errors
def pretrain(config_path: Path | None, train: tuple[str, ...], codebook_path: str | None,
             visible_moving_ratio: float | None, compile_: bool | None, **flags) -> None:
    """Masked motion pretraining of the Motion encoder on shards.

    \b
    Example:
      mvmae pretrain --train 'shards/train-{000000..000009}.tar' --codebook codebook.npz \\
          --masking mgm --epochs 100 --out runs/pretrain
    Multi-GPU / multi-process: torchrun --nproc_per_node=N -m mvmae.cli pretrain ...
    """
    from mvmae.train.config import load_config
    from mvmae.train.pretrain import PretrainConfig, Pretrainer

    overrides = _overrides(train=list(train) or None, codebook=codebook_path, compile=compile_, **flags)
    cfg = load_config(PretrainConfig, config_path, overrides)
    if visible_moving_ratio is not None:
        cfg.masking_options = {**cfg.masking_options, "visible_moving_ratio": visible_moving_ratio}
    if not cfg.train or not cfg.codebook:
        raise click.UsageError("--train and --codebook are required (on the command line or in --config)")
    metrics = Pretrainer(cfg).run()
    shown = ("loss", "masked_acc", "acc_moving", "acc_moving_baseline", "info_gain", "info_gain_moving",
             "masked_mse", "mse_moving",
             "no_visible_motion_ratio", "tokens_per_s")
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
    click.echo(f"pretraining done: {summary} -> {cfg.out}")
    _end_of_run()



@main.command("train")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML with any FinetuneConfig field (nested: model.*, tokens.*); flags override it.")
@click.option("--train", "train", cls=UrlsOption,
              help="Training shard URLs or brace patterns: several after one flag (a shell glob), or the flag "
                   "repeated.")
@click.option("--val", "val", cls=UrlsOption, help="Validation shard URLs or brace patterns, as --train.")
@click.option("--out", "out", help="Output folder: checkpoints, config.yaml, metrics.jsonl, tensorboard/.")
@click.option("--classes", help="classes.json of the extraction job [default: beside the first train shard].")
@click.option("--pretrained",
              help="Motion encoder checkpoint from `mvmae pretrain`: its weights, architecture and token spec "
                   "(else from scratch).")
@click.option("--init", "init", help="Start from a classifier checkpoint's weights (nothing else).")
@click.option("--resume", is_flag=True, default=None,
              help="Continue from OUT/last.pt, any phase (from the start if there is none yet), with the same "
                   "config and classes: --config OUT/config.yaml --resume.")
@click.option("--arch", type=click.Choice(["mvmae", "cnn3d"]),
              help="mvmae (encoders + temporal transformer) or cnn3d (a plain 3D CNN baseline) [default: mvmae].")
@click.option("--inputs", type=click.Choice(["mv", "iframe", "both"]), help="Paths to use [default: both].")
@click.option("--context-model", help="timm backbone for I-frames [default: vit_base_patch16_224].")
@click.option("--context-weights", help="Local weights file for the context backbone (nothing is downloaded).")
@click.option("--motion-size", type=click.Choice(["micro", "tiny", "small", "base"]),
              help="Motion encoder size when not pretrained [default: small].")
@click.option("--motion-embed", type=click.Choice(["linear", "conv"]),
              help="Motion encoder token embedding when not pretrained: per token (ViT), or a 3x3x3 "
                   "convolution over the token grid, each token knowing its neighbours [default: conv].")
@click.option("--fusion", type=click.Choice(["concat", "afm"]), help="Feature fusion [default: concat].")
@click.option("--dptam/--no-dptam", default=None, help="Double-pooling temporal attention on motion features.")
@click.option("--motion-pool", type=click.Choice(["motion", "mean", "attention"]),
              help="Pool a segment's motion tokens: mean weighted by each token's camera-compensated "
                   "motion (the few moving tokens carry the class), plain mean (published), or a "
                   "learnt attention query [default: motion].")
@click.option("--temporal-tokens", type=click.Choice(["segment", "step"]),
              help="Temporal Transformer tokens of the motion path: one per segment (published), or one per "
                   "tubelet time step, keeping the order of the motion inside a segment [default: segment].")
@click.option("--segments", type=int, help="Segments per clip [default: 8].")
@click.option("--dim", type=int, help="Temporal transformer width [default: 512].")
@click.option("--segment-frames", type=int, help="MV frames per segment when not pretrained [default: 16].")
@click.option("--mv-size", type=int, help="MV cells per side when not pretrained [default: 14].")
@click.option("--iframe-size", type=int, help="I-frame size px when not pretrained [default: 224].")
@click.option("--epochs", type=int, help="Total epochs [default: 51: phase 1 = 0-5, phase 2 = 6-50].")
@click.option("--warmup-epochs", type=int,
              help="Linear warmup; one longer than the run is cut to a tenth of it, with a warning [default: 1].")
@click.option("--schedule", type=click.Choice(["two_phase", "full"]),
              help="two_phase: pretrained encoders frozen, then their top blocks at a lower LR; full: every "
                   "parameter from the start, layer-wise LR decay in pretrained encoders [default: two_phase].")
@click.option("--scratch-lr-scale", type=float,
              help="LR of encoders that were not pretrained (they train whole) / LR [default: 0.1].")
@click.option("--layer-decay", type=float, help="--schedule full: LR factor per encoder layer down [default: 0.75].")
@click.option("--label-fraction", type=float,
              help="Train on this share of each class's samples (stratified, at least 1 each) [default: 1].")
@click.option("--label-seed", type=int, help="Seed of the --label-fraction draw [default: 0].")
@click.option("--phase1-epochs", type=int, help="Epochs with the pretrained encoders frozen [default: 6].")
@click.option("--unfreeze-blocks", type=int, help="Top encoder blocks trained in phase 2 [default: 2].")
@click.option("--encoder-lr-scale", type=float, help="LR of unfrozen encoder blocks / LR [default: 0.1].")
@click.option("--lr", type=float, help="LR of the new parts [default: 5e-5].")
@click.option("--batch-size", type=int, help="Clips per step and process [default: 8].")
@click.option("--accum-steps", type=int, help="Gradient accumulation [default: 1].")
@click.option("--workers", type=int, help="DataLoader workers per process [default: 2].")
@click.option("--label-smoothing", type=float, help="[default: 0.1]")
@click.option("--ema", type=float, help="EMA decay of the weights (0: off) [default: 0].")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model.")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast on CUDA [default: on].")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms (reproducible resume).")
@click.option("--steps-per-epoch", type=int, help="Optimizer steps per epoch from resampled shards (0: one pass; "
              "on several ranks, an equal epoch sized from the shards' manifest).")
@click.option("--flip-prob", type=float, help="Horizontal flips (negate dx, swapping left/right and cw/ccw classes); 0.5 where classes are mirror-symmetric [default: 0].")
@click.option("--rotate/--no-rotate", default=None,
              help="Random quarter turns of field and I-frames (top-down footage: no direction is up) [default: off].")
@click.option("--crop-area", type=(float, float), default=None, help="Random crop area range [default: 0.35 1.0].")
@click.option("--seed", type=int, help="[default: 0]")
@handle_errors
def train_cmd(config_path: Path | None, train: tuple[str, ...], val: tuple[str, ...], compile_, **flags) -> None:
    """Fine-tune the MV-MAE classifier in two phases, validating after every epoch.

    \b
    Phase 1 (epochs 0-5): pretrained Context and Motion encoders frozen (one that was not
    pretrained trains whole from the start, at --scratch-lr-scale); temporal transformer, fusion and
    head train. Phase 2 (epochs 6-50): the top 2 blocks of each encoder train too, at 10x lower LR.
    --schedule full trains everything from the start instead. Validation logs top-1/5, macro-F1, macro precision and recall, mean class accuracy;
    best.pt follows macro-F1.
    \b
    Example:
      mvmae train --train 'sh/train-{000000..000099}.tar' --val 'sh/val-{000000..000009}.tar' \\
          --pretrained runs/pretrain/last.pt --out runs/train
    """
    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.train.config import load_config
    from mvmae.train.finetune import FinetuneConfig, Finetuner

    nested = {"arch": "model.arch", "inputs": "model.inputs", "context_model": "model.context_model",
              "context_weights": "model.context_weights", "motion_size": "model.motion_size",
              "motion_embed": "model.motion_embed",
              "fusion": "model.fusion", "dptam": "model.dptam", "motion_pool": "model.motion_pool",
              "temporal_tokens": "model.temporal_tokens", "segments": "model.num_segments",
              "dim": "model.dim", "segment_frames": "tokens.num_frames", "mv_size": "tokens.mv_size",
              "iframe_size": "tokens.iframe_size"}
    values = {nested.get(k, k): v for k, v in flags.items()}
    overrides = _overrides(train=list(train) or None, val=list(val) or None, compile=compile_, **values)
    cfg = load_config(FinetuneConfig, config_path, overrides)
    if not cfg.train:
        raise click.UsageError("--train is required (on the command line or in --config)")
    if cfg.pretrained:
        _refuse_pretrained_conflicts(cfg.pretrained, {f"--{k.replace('_', '-')}": (nested[k], v)
                                                      for k, v in flags.items() if k in _PRETRAINED_FLAGS})
    metrics = Finetuner(cfg, StreamingMetrics).run()
    if metrics:
        from mvmae.eval.report import format_table

        click.echo(format_table(metrics))
    click.echo(f"training done -> {cfg.out} (best.pt by {cfg.best_metric}, last.pt, metrics.jsonl)")
    _end_of_run()



# The flags of `mvmae train` that a --pretrained checkpoint fixes.
_PRETRAINED_FLAGS = ("motion_size", "motion_embed", "segment_frames", "mv_size", "iframe_size")


def _end_of_run() -> None:
    """A torchrun rank leaves here, its run complete (``distributed.exit_finished_rank``: no
    interpreter teardown for gloo to abort); a plain process returns to click as usual."""
    from mvmae.train.distributed import exit_finished_rank, launched_by_torchrun

    if launched_by_torchrun():
        exit_finished_rank()


def _refuse_pretrained_conflicts(path: str, flags: dict[str, tuple[str, object]]) -> None:
    """A one-line error when a flag (name -> (config key, value or None)) asks for another value
    than pretraining checkpoint ``path`` brings (its Motion encoder's architecture, its tokens)."""
    from mvmae.train.config import ConfigError
    from mvmae.train.pretrained import load_pretrained_motion

    pretrained = load_pretrained_motion(path)
    given = {key: value for key, value in flags.values() if value is not None}
    for key, mine, theirs in pretrained.conflicts(given):
        flag = next(name for name, (k, _) in flags.items() if k == key)
        part, name = key.split(".")
        whose = "Motion encoder has" if part == "model" else "token spec has"
        raise ConfigError(f"{flag} {mine} conflicts with --pretrained {path}, whose {whose} {name} {theirs}: "
                          f"leave the flag out (the checkpoint brings its architecture and token spec)")


def _echo_views_table(metrics: dict) -> None:
    """The headline metrics of ``mvmae eval``'s result, a column per view setting."""
    keys = ("top1", "top5", "macro_f1", "macro_precision", "macro_recall", "mean_class_acc")
    views = [v for v in ("single_view", "multi_view") if f"{v}_top1" in metrics]
    click.echo(f"{'metric':<16}" + "".join(f"{v.replace('_', '-'):>13}" for v in views))
    for key in keys:
        click.echo(f"{key:<16}" + "".join(f"{metrics[f'{v}_{key}']:>13.2%}" for v in views))


@main.command("eval")
@click.option("--ckpt", "ckpt", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Classifier checkpoint from `mvmae train` (best.pt or last.pt).")
@click.option("--data", "data", cls=UrlsOption, required=True,
              help="Shard URLs or brace patterns: several after one flag (a shell glob), or the flag repeated.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Report folder: metrics.json, per_class.csv, confusion_matrix.csv/.png, predictions.")
@click.option("--clips", type=click.IntRange(min=1), default=1, show_default=True,
              help="Evenly spaced clips per video (multi-view).")
@click.option("--crops", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: centre crop; 2: centre crop and the full frame.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--max-skip-ratio", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Fail when more than this share of the samples cannot be used (default: no limit, "
                   "as training; skipped samples are named in warnings and counted in metrics.json).")
@handle_errors
def eval_cmd(ckpt: Path, data: tuple[str, ...], out: Path, clips: int, crops: int, batch_size: int,
             workers: int, device: str, max_skip_ratio: float | None) -> None:
    """Evaluate a classifier: top-1/5, macro F1, precision and recall, mean class accuracy.

    Writes OUT/metrics.json (single-view and, with --clips/--crops > 1, multi-view numbers),
    per_class.csv, confusion_matrix.csv and .png, predictions.csv and per_video.jsonl (scores
    per video, for late fusion).
    """
    from mvmae.eval.evaluate import EvalConfig, evaluate

    metrics = evaluate(EvalConfig(ckpt=str(ckpt), data=list(data), out=str(out), clips=clips,
                                  crops=crops, batch_size=batch_size, workers=workers, device=device,
                                  max_skip_ratio=max_skip_ratio))
    _echo_views_table(metrics)
    click.echo(f"{metrics['num_samples']} videos, {metrics['views']} view(s) per video"
               + (f"; {metrics['num_samples_skipped']} sample(s) skipped (see the warnings)"
                  if metrics["num_samples_skipped"] else ""))
    click.echo(f"report -> {out} (metrics.json, confusion_matrix.png, per_class.csv, predictions.csv)")



@main.command()
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), default="mvmae-demo",
              show_default=True, help="Folder for the dataset, shards, checkpoints and reports.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Extraction processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def demo(out: Path, workers: int, seed: int) -> None:
    """The whole pipeline on a synthetic dataset, on the CPU (a few minutes on 2 cores).

    synth -> extract run -> codebook -> pretrain -> train -> eval, then the metrics table and
    where the plots are. Running it again with the same --out resumes where it stopped.
    """
    import time

    from mvmae.demo import DemoConfig, run_demo

    t0 = time.monotonic()
    metrics = run_demo(DemoConfig(out=out, workers=workers, seed=seed),
                       lambda name: click.secho(f"== {name}", bold=True, err=True))
    click.echo()
    _echo_views_table(metrics)
    click.echo(f"\n{metrics['num_samples']} validation videos; done in {time.monotonic() - t0:.0f} s")
    click.echo(f"plots: {out / 'eval' / 'confusion_matrix.png'}, {out / 'eval' / 'training_curves.png'}")
    click.echo(f"report: {out / 'eval' / 'metrics.json'}; checkpoints: {out / 'train'}")
