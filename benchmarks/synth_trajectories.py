"""What the ``trajectories`` synthetic set is made of: cost per clip, moving cells, shortcuts.

    python benchmarks/synth_trajectories.py [--clips-per-class 3] [--paths-per-class 200]

(1) Renders and encodes ``--clips-per-class`` clips of each class at the default config (CPU
seconds of this process per clip: rendering + libx264, one thread), extracts them with
``mvmae.extract`` and reports the share of valid MV cells (8 px) whose camera-compensated motion
(field minus its median) exceeds 0.5 px per frame, per class and overall, on the inter frames.
(2) From ``--paths-per-class`` ground-truth paths per class (no video): the share of clips whose
speed was scaled down to stay in view, and the top-1 of nearest-class-mean classifiers (half to
fit, half to score; chance 1/12) on the clip's mean compensated velocity (dx, dy), on its length
alone, and on the clip's speed. Prints markdown tables; no asserts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mvmae.extract.video import extract_video
from mvmae.synth import (TRAJECTORIES, SynthConfig, encode_h264, plan_trajectory,
                         render_trajectory, x264_options)


def moving_share(fields) -> list[float]:
    """Per inter frame: the share of valid cells moving > 0.5 px per frame against the median."""
    shares = []
    for t in range(fields.num_frames):
        valid = fields.valid[t]
        if valid.sum() < 0.5 * valid.size:
            continue  # I-frames (and frames of mostly intra blocks)
        field = fields.mv[t][:, valid]  # (2, n)
        field = field - np.median(field, axis=1, keepdims=True)
        shares.append(float((np.hypot(*field) > 0.5).mean()))
    return shares


def video_stats(cfg: SynthConfig, clips_per_class: int, folder: Path) -> None:
    print("| class | CPU s per clip | moving cells (mean) | moving cells (10th-90th pct) |")
    print("|---|---|---|---|")
    all_seconds, all_shares = [], []
    options = x264_options(cfg.bframes, cfg.refs, cfg.gop, cfg.crf)
    for c, name in enumerate(TRAJECTORIES):
        seconds, shares = [], []
        for i in range(clips_per_class):
            start = time.process_time()
            frames, _ = render_trajectory(name, cfg, np.random.default_rng([99, c, i]))
            path = encode_h264(folder / f"{name}_{i}.mp4", frames, cfg.fps, options)
            seconds.append(time.process_time() - start)
            shares += moving_share(extract_video(path))
        lo, hi = np.percentile(shares, [10, 90])
        print(f"| {name} | {np.mean(seconds):.3f} | {np.mean(shares):.3f} | {lo:.3f}-{hi:.3f} |")
        all_seconds += seconds
        all_shares += shares
    lo, hi = np.percentile(all_shares, [10, 90])
    print(f"| **all** | {np.mean(all_seconds):.3f} | {np.mean(all_shares):.3f} | {lo:.3f}-{hi:.3f} |")


def nearest_mean_top1(x: np.ndarray, y: np.ndarray) -> float:
    """Fit class means on the even rows, score the odd ones. x: (N, D), y: (N,)."""
    fit = np.arange(len(y)) % 2 == 0
    means = np.stack([x[fit & (y == c)].mean(0) for c in np.unique(y)])  # (C, D)
    pred = ((x[~fit][:, None] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == y[~fit]).mean())


def path_stats(cfg: SynthConfig, paths_per_class: int) -> None:
    rows, labels, fitted = [], [], []
    for c, name in enumerate(TRAJECTORIES):
        for i in range(paths_per_class):
            truth = plan_trajectory(name, cfg, np.random.default_rng([7, c, i]))
            mean = truth.world_velocity.mean(0)
            rows.append([*mean, np.hypot(*mean), truth.speed_px_per_frame])
            labels.append(c)
            fitted.append(truth.fit < 1)
    x, y = np.array(rows), np.array(labels)
    fitted = np.array(fitted)
    print("\n| class | mean-velocity length (px/frame) | speed scaled to fit |\n|---|---|---|")
    for c, name in enumerate(TRAJECTORIES):
        print(f"| {name} | {x[y == c, 2].mean():.2f} | {fitted[y == c].mean():.0%} |")
    print(f"\n| nearest-class-mean on | top-1 (chance {1 / len(TRAJECTORIES):.3f}) |\n|---|---|")
    for label, cols in [("mean velocity (dx, dy)", [0, 1]), ("its length", [2]), ("speed", [3])]:
        print(f"| {label} | {nearest_mean_top1(x[:, cols], y):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=3)
    parser.add_argument("--paths-per-class", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = SynthConfig(preset="trajectories")
    print(f"trajectories preset, defaults: size {cfg.size}, {cfg.num_frames} frames, actor "
          f"{cfg.actor_px} px, speed {cfg.speed_range} px/frame\n")
    with tempfile.TemporaryDirectory() as tmp:
        video_stats(cfg, args.clips_per_class, Path(tmp))
    path_stats(cfg, args.paths_per_class)


if __name__ == "__main__":
    main()
