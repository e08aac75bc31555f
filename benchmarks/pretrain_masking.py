"""Masking strategies compared: a short masked motion pretraining each, then a linear probe (CPU).

    python benchmarks/pretrain_masking.py [--epochs N] [--seeds 0 1 ...] [--work-dir DIR] [--out-md PATH]

Data: ``mvmae.synth`` (classes that differ by motion alone: a textured actor walking right, left,
down or up, circling clockwise or anticlockwise, pacing horizontally or vertically over textured
ground under a drifting camera), real H.264 extracted by ``run_job`` into train and val shards.
All 8 classes by default: with only the 4 walking directions, the probe on a *random* encoder
already reaches ~0.9 val top-1 and leaves nothing to compare. One codebook is learnt from the
train shards (``build_codebook``, what ``mvmae codebook`` runs).

Default sizes (8 classes x 16 clips of 32 frames -> 96 train / 32 val videos; 16-frame clips on
8x8 cells -> 512 tokens; micro encoder, 64-d x 2 decoder, 8 epochs of batch 8; seeds 0, 1, 2;
one torch thread) aim at under 8 minutes on 2 cores shared with a few other jobs. Use one
thread on such cores: with torch's default of 2, one seed of 72 train videos took 9.3 minutes
at load 5-8 (the threads spin-wait for each other while other jobs hold the cores), 1 minute
with one thread.

For each masking strategy (random, tube, mgm, mofo, videoms) and each seed, a micro Motion
encoder is pretrained for the same number of epochs with the same optimizer, schedule, decoder
and data (``Pretrainer``, as ``mvmae pretrain`` runs it). Then the linear probe: the encoder is
frozen, each clip (one centre clip per video, centre crop) is encoded with all its tokens,
``MotionEncoder.pooled`` (mean over space) is averaged over time into one feature vector, and a
logistic regression (standardised features) fitted on the train clips is scored on the val clips.
The baseline is the same probe on the randomly initialised encoder every run starts from (same
seed), measured in the same run.

Pretraining throughput (clip tokens, visible or not, per CPU second of training step on one
thread) is measured apart from the runs, compute only, interleaving the strategies
(``measure_throughput``), and given as ratios to random masking: on a shared machine the wall
time of whole runs mostly measures the other users. The runs' wall times are printed too.

With tens of clips and a few epochs the val top-1 moves by whole clips (1/num_val each) and the
ranking of the strategies is noisy: the table gives each seed's value next to the mean.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sklearn
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_model, git_state, loadavg  # noqa: E402

from mvmae.job.job import JobConfig, run_job  # noqa: E402
from mvmae.shards.reader import build_eval_pipeline, build_train_pipeline, make_loader  # noqa: E402
from mvmae.synth import SynthConfig, make_dataset  # noqa: E402
from mvmae.train import checkpoint as ckpt  # noqa: E402
from mvmae.train.codebook import Codebook, CodebookConfig, build_codebook  # noqa: E402
from mvmae.train.motion_encoder import MotionEncoder  # noqa: E402
from mvmae.train.pretext import PretextOptions, pretext_loss  # noqa: E402
from mvmae.train.pretrain import MASKINGS, PretrainConfig, Pretrainer, build_model  # noqa: E402
from mvmae.train.tokenizer import TokenSpec, tokenize  # noqa: E402


# --------------------------------------------------------------------------- data


def build_data(work: Path, args: argparse.Namespace) -> dict:
    """Synthetic videos and their train/val shards, reused when already there (both steps are
    deterministic and ``run_job`` skips complete shards)."""
    cfg = SynthConfig(num_classes=args.classes, clips_per_class=args.clips_per_class,
                      num_frames=args.frames, size=(128, 160), val_ratio=args.val_ratio, seed=args.data_seed)
    root = work / (f"data-c{cfg.num_classes}x{cfg.clips_per_class}-f{cfg.num_frames}"
                   f"-v{cfg.val_ratio}-s{cfg.seed}")
    lists = {split: root / "videos" / f"{split}.txt" for split in ("train", "val")}
    if not all(p.exists() for p in lists.values()):
        lists = make_dataset(root / "videos", cfg)
    urls, counts = {}, {}
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=lists[split], out_dir=root / "shards", split=split, shard_size=8))
        if summary.num_failed or summary.shards_failed:
            raise RuntimeError(f"extraction of {lists[split]} failed: {summary}")
        urls[split] = str(root / "shards" / f"{split}-{{000000..{summary.num_shards - 1:06d}}}.tar")
        counts[split] = summary.num_samples
    return {"root": root, "urls": urls, "counts": counts}


def prepare_codebook(data: dict, spec: TokenSpec, args: argparse.Namespace) -> Path:
    """A codebook of the train shards (two clips per video), the token spec stored in it."""
    path = data["root"] / f"codebook-k{args.codebook_size}-t{spec.num_frames}-m{spec.mv_size}.npz"
    if not path.exists():
        build_codebook([data["urls"]["train"]], spec, CodebookConfig(size=args.codebook_size),
                       clips_per_video=2, batch_size=16, workers=0).save(path)
    return path


# --------------------------------------------------------------------------- pretraining and probe


def run_config(args: argparse.Namespace, data: dict, codebook: Path, masking: str, seed: int,
               out: Path) -> PretrainConfig:
    return PretrainConfig(
        train=[data["urls"]["train"]], codebook=str(codebook), out=str(out), masking=masking,
        model_size=args.model_size, decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
        decoder_heads=args.decoder_heads, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size, lr=args.lr, workers=0, seed=seed, keep_last=0, log_every=10**6)


def pretrain(cfg: PretrainConfig) -> dict:
    """One pretraining run from scratch: its last epoch's metrics, wall time, encoder weights."""
    out = Path(cfg.out)
    for stale in out.glob("*"):  # a fresh run: an earlier one's metrics.jsonl would be appended to
        if stale.is_file():
            stale.unlink()
    t0 = time.perf_counter()
    last = Pretrainer(cfg).run()
    return {"loss": last["loss"], "masked_acc": last["masked_acc"], "seconds": time.perf_counter() - t0,
            "encoder": _encoder_state(out / ckpt.LAST_NAME)}


def _encoder_state(path: Path) -> dict:
    state = ckpt.load_checkpoint(path)[ckpt.MODEL]
    return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}


def random_encoder_state(cfg: PretrainConfig, spec: TokenSpec, book: Codebook) -> dict:
    """The encoder weights a pretraining run with ``cfg.seed`` starts from (Pretrainer seeds the
    same way before building its model)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg, spec, book.size).encoder.state_dict()


@torch.no_grad()
def clip_features(encoder: MotionEncoder, urls: str, spec: TokenSpec) -> tuple[np.ndarray, np.ndarray]:
    """One centre clip per video -> features float (V, C): pooled (B, T', C) averaged over T'."""
    encoder.eval()
    loader = make_loader(build_eval_pipeline(urls, spec.clip_config("center"), 16), 0)
    feats, labels = [], []
    for batch in loader:
        tokens, _ = tokenize(batch["mv"], batch["valid"], spec)  # (B, N, D)
        feats.append(encoder.pooled(tokens).mean(dim=1))  # (B, C)
        labels.append(batch["label"])
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def linear_probe(encoder_state: dict, cfg: PretrainConfig, spec: TokenSpec, book: Codebook,
                 data: dict) -> dict:
    """Top-1 of a logistic regression on frozen features: train (fit) and val (held out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    encoder = build_model(cfg, spec, book.size).encoder
    encoder.load_state_dict(encoder_state)
    x_train, y_train = clip_features(encoder, data["urls"]["train"], spec)
    x_val, y_val = clip_features(encoder, data["urls"]["val"], spec)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=cfg.seed))
    probe.fit(x_train, y_train)
    return {"train_top1": float(probe.score(x_train, y_train)), "val_top1": float(probe.score(x_val, y_val))}


def measure_throughput(args: argparse.Namespace, data: dict, codebook: Path, work: Path,
                       rounds: int = 5, steps: int = 3) -> dict[str, float]:
    """Pretraining tokens per CPU second per strategy, on one thread: ``steps`` training steps
    (masking, forward, backward, AdamW) on one fixed in-memory batch, in ``rounds`` rounds that
    interleave the strategies (the first one rotating), median over rounds. One thread and
    process CPU time, because on a shared machine wall time (and the CPU time of threads that
    spin-wait for each other) mostly measures the other users. Data loading is left out (the
    same for all). The model, optimizer and masking are a ``Pretrainer``'s own."""
    trainers = {}
    for masking in args.maskings:
        cfg = run_config(args, data, codebook, masking, 0, work / f"throughput-{masking}")
        cfg.steps_per_epoch = 1  # skips the counting pass over the shards
        trainers[masking] = trainer = Pretrainer(cfg)
        trainer.close()  # built for its model, optimizer and masking, never run
    first = next(iter(trainers.values()))
    pipeline = build_train_pipeline(data["urls"]["train"], first.spec.clip_config("train"), args.batch_size)
    batch = next(iter(make_loader(pipeline, 0)))
    tokens_per_step = batch["mv"].shape[0] * first.spec.grid.num_tokens
    speeds: dict[str, list[float]] = {m: [] for m in trainers}
    names, threads = list(trainers), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in range(rounds + 1):  # round 0 warms up (allocator, caches) and is not counted
            for masking in names[r % len(names):] + names[:r % len(names)]:
                t, generator = trainers[masking], torch.Generator().manual_seed(r)
                t0 = time.process_time()
                for _ in range(steps):
                    loss, _ = pretext_loss(t.model, batch, t.spec, t.book, t.masking, PretextOptions(), generator,
                                           t.device)
                    loss.backward()
                    t.optimizer.step()
                    t.optimizer.zero_grad(set_to_none=True)
                if r:
                    speeds[masking].append(steps * tokens_per_step / (time.process_time() - t0))
    finally:
        torch.set_num_threads(threads)
    return {m: statistics.median(v) for m, v in speeds.items()}


# --------------------------------------------------------------------------- report


def _cell(values: list[float], fmt: str) -> str:
    """One value, or the mean then each seed's value in brackets."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ({', '.join(format(v, fmt) for v in values)})"


BASELINE = "random init (no pretraining)"


def table(results: dict[str, list[dict]], speeds: dict[str, float]) -> str:
    """Markdown table: the random-init baseline, then one row per strategy (seed means, each
    seed's value in brackets); throughput relative to the first strategy (random masking)."""
    base_top1 = statistics.mean(r["val_top1"] for r in results[BASELINE])
    base_speed = next(iter(speeds.values()))
    lines = ["| encoder | last-epoch loss | masked acc | run wall s | tokens per CPU-s (1 thread) | vs "
             f"{next(iter(speeds))} | probe train top-1 | probe val top-1 | val top-1 vs random init |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in results.items():
        if name == BASELINE:
            cells = ["-"] * 5
        else:
            cells = [_cell([r["loss"] for r in runs], ".3f"), _cell([r["masked_acc"] for r in runs], ".3f"),
                     _cell([r["seconds"] for r in runs], ".0f"), f"{speeds[name]:.0f}",
                     f"{speeds[name] / base_speed:.2f}x"]
        delta = statistics.mean(r["val_top1"] for r in runs) - base_top1
        cells += [_cell([r["train_top1"] for r in runs], ".3f"), _cell([r["val_top1"] for r in runs], ".3f"),
                  "-" if name == BASELINE else f"{delta:+.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings(args: argparse.Namespace, data: dict, spec: TokenSpec, book: Codebook) -> str:
    model = cpu_model()
    counts = data["counts"]
    return "\n".join([
        f"- machine: nproc {os.cpu_count()}, CPU model \"{model}\", torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), scikit-learn {sklearn.__version__}, Python {platform.python_version()}",
        f"- mvmae: {git_state()}",
        f"- command: `{' '.join(['python', f'benchmarks/{Path(__file__).name}', *sys.argv[1:]])}`",
        f"- data: mvmae synth, {args.classes} classes x {args.clips_per_class} clips of {args.frames} frames "
        f"128x160 px (seed {args.data_seed}): {counts['train']} train / {counts['val']} val videos",
        f"- tokens: {spec.num_frames}-frame clips, {spec.mv_size}x{spec.mv_size} cells, tubelet "
        f"{spec.tubelet_frames}x{spec.tubelet_cells} -> {spec.grid.num_tokens} tokens of dim {spec.token_dim}; "
        f"codebook K={book.size} (perplexity {book.stats['perplexity']:.1f}, static {book.stats['static_ratio']:.0%})",
        f"- pretraining: {args.model_size} encoder, decoder {args.decoder_dim}-d x {args.decoder_depth}, "
        f"mask ratio 0.9, {args.epochs} epochs ({args.warmup_epochs} warmup), batch {args.batch_size}, "
        f"lr {args.lr:g}, AdamW + cosine; seeds {', '.join(map(str, args.seeds))} (init, data order, masks)",
        "- probe: frozen encoder, centre clip per video, pooled features averaged over time, "
        "StandardScaler + LogisticRegression (lbfgs, C=1)",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8, help="pretraining epochs per run (default 8)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds (default 0 1 2)")
    p.add_argument("--classes", type=int, default=8, help="synthetic motion classes, 2..8 (default 8)")
    p.add_argument("--clips-per-class", type=int, default=16)
    p.add_argument("--val-ratio", type=float, default=0.25)
    p.add_argument("--frames", type=int, default=32, help="frames per synthetic video")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--clip-frames", type=int, default=16, help="frames per training clip (T)")
    p.add_argument("--mv-size", type=int, default=8, help="cells per side of a clip's MV field")
    p.add_argument("--codebook-size", type=int, default=64)
    p.add_argument("--model-size", default="micro", choices=["micro", "tiny"])
    p.add_argument("--decoder-dim", type=int, default=64)
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--decoder-heads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--maskings", nargs="+", default=list(MASKINGS), choices=MASKINGS)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for the runs and probes (default 1: on cores shared with "
                        "other jobs, OpenMP threads spin against them and runs get several times slower)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mvmae-bench" / "pretrain_masking")
    p.add_argument("--out-md", type=Path, help="also write the report as markdown to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    load_start, t_start = loadavg(), time.perf_counter()
    data = build_data(args.work_dir, args)
    spec = TokenSpec(num_frames=args.clip_frames, mv_size=args.mv_size)
    codebook = prepare_codebook(data, spec, args)
    book = Codebook.load(codebook)
    print(f"data and codebook ready in {time.perf_counter() - t_start:.0f} s", flush=True)
    runs = args.work_dir / "runs"
    speeds = measure_throughput(args, data, codebook, runs)
    print("tokens per CPU-s: " + ", ".join(f"{m} {v:.0f}" for m, v in speeds.items()), flush=True)
    results: dict[str, list[dict]] = {BASELINE: []}
    for seed in args.seeds:
        cfg = run_config(args, data, codebook, args.maskings[0], seed, runs / "unused")
        probe = linear_probe(random_encoder_state(cfg, spec, book), cfg, spec, book, data)
        results[BASELINE].append(probe)
        print(f"seed {seed} {BASELINE}: " + ", ".join(f"{k} {v:.4g}" for k, v in probe.items()), flush=True)
        for masking in args.maskings:
            cfg = run_config(args, data, codebook, masking, seed, runs / f"{masking}-s{seed}")
            run = pretrain(cfg)
            run.update(linear_probe(run.pop("encoder"), cfg, spec, book, data))
            results.setdefault(masking, []).append(run)
            print(f"seed {seed} {masking}: " + ", ".join(f"{k} {v:.4g}" for k, v in run.items()), flush=True)
    report = ["## Masked motion pretraining: masking strategies by linear probe (CPU)", "",
              settings(args, data, spec, book), "", table(results, speeds), "",
              f"Total wall time {time.perf_counter() - t_start:.0f} s; load average (1, 5, 15 min) at start "
              f"{load_start}, at end {loadavg()} (above the core count means other work shared the cores).", ""]
    print("\n".join(report), flush=True)
    if args.out_md:
        args.out_md.write_text("\n".join(report))


if __name__ == "__main__":
    main()
