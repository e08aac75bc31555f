"""Training-step throughput fed from shards vs from tensors already in memory.

    python benchmarks/train_speed.py [--workers 0 1] [--steps 30] [--batch-size 8]

Builds a small synthetic dataset (mvmae synth + extract run, cached in $TMPDIR/mvmae-bench-train),
then times full training steps (forward, backward, AdamW) of the same MV-MAE classifier:
(a) batches from the shard reader (webdataset pipeline, clip sampling, augmentation, collation)
with N DataLoader workers, and (b) the same batches replayed from memory. The ratio a/b shows
whether the loader is the bottleneck (1.0: the model is). Prints a markdown table; no asserts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mvmae.shards.clips import ClipConfig
from mvmae.job.job import JobConfig, run_job
from mvmae.shards.reader import build_train_pipeline, make_loader
from mvmae.synth import SynthConfig, make_dataset
from mvmae.train.model import ClassifierConfig, MVMAEClassifier
from mvmae.train.tokenizer import TokenSpec


def dataset(root: Path) -> list[str]:
    """The cached shards; an interrupted build resumes (run_job skips the complete shards)."""
    if not (root / "data" / "train.txt").exists():
        make_dataset(root / "data", SynthConfig(num_classes=4, clips_per_class=16, num_frames=48))
    run_job(JobConfig(input=root / "data" / "train.txt", out_dir=root / "shards", shard_size=4))
    return [str(p) for p in sorted((root / "shards").glob("train-*.tar"))]


def model_and_clip(inputs: str) -> tuple[MVMAEClassifier, ClipConfig]:
    spec = TokenSpec(num_frames=16, mv_size=8, iframe_size=64)
    cfg = ClassifierConfig(num_classes=4, inputs=inputs, context_model="resnet18", motion_size="micro",
                           num_segments=2, dim=64, temporal_heads=4)
    # as mvmae train reads: one I-frame per segment, none for a motion-only model
    clip = ClipConfig(num_frames=32, mode="train", num_iframes=0 if inputs == "mv" else 2, mv_size=8,
                      iframe_size=64, flip_prob=0)
    return MVMAEClassifier(cfg, spec), clip


def step(model, optimizer, batch) -> None:
    logits = model(batch["mv"], batch["valid"], batch["iframes"])
    loss = F.cross_entropy(logits, batch["label"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_steps(model, optimizer, batches, steps: int) -> float:
    """Clips per second over ``steps`` training steps after 3 warm-up steps."""
    it = iter(batches)
    for _ in range(3):
        step(model, optimizer, next(it))
    t0, clips = time.perf_counter(), 0
    for batch in itertools.islice(it, steps):
        step(model, optimizer, batch)
        clips += len(batch["label"])
    return clips / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--inputs", nargs="+", default=["mv", "both"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    urls = dataset(Path(tempfile.gettempdir()) / "mvmae-bench-train")
    print(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, "
          f"Python {platform.python_version()}, torch {torch.__version__} (1 thread in the main process)")
    print(f"- command: `python benchmarks/train_speed.py {' '.join(sys.argv[1:])}`")
    print(f"- {len(urls)} shards, batch {args.batch_size}, {args.steps} timed steps")
    print("\n| inputs | loader workers | clips/s from shards | clips/s from memory | shards / memory |")
    print("|---|---:|---:|---:|---:|")
    for inputs in args.inputs:
        torch.manual_seed(0)
        model, clip = model_and_clip(inputs)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        cached = list(itertools.islice(itertools.cycle(make_loader(build_train_pipeline(
            urls, clip, args.batch_size, resampled=True), 0)), args.steps + 3))
        memory = time_steps(model, optimizer, cached, args.steps)
        for workers in args.workers:
            pipe = build_train_pipeline(urls, clip, args.batch_size, resampled=True)
            shards = time_steps(model, optimizer, make_loader(pipe, workers), args.steps)
            print(f"| {inputs} | {workers} | {shards:.1f} | {memory:.1f} | {shards / memory:.2f} |")


if __name__ == "__main__":
    main()
