"""``mvmae predict`` speed on ONE core: a 480p H.264 clip against real time.

    python benchmarks/predict_speed.py [--seconds 10] [--repeats 3] [--cache-dir DIR]

The clip: a libx264 pan (``tests.media.make_pan_clip``: 480x854, 25 fps, 2 B-frames, GOP 50) of
``--seconds`` seconds, cached in ``--cache-dir``. Classifiers with random weights (speed does not
depend on them) of three sizes: the CPU-sized one of the benchmarks (micro Motion encoder, motion
only, 2 segments of 16 frames at 8 x 8 cells), the Motion encoder ``small`` alone and the
command's defaults (``small`` + ``vit_base_patch16_224`` on 8 segments of 16 frames at 14 x 14
cells, 224-px I-frames). Each is timed through ``mvmae.eval.predict`` with one view, the micro one
also with ``--clips 4 --crops 2`` (8 views; the larger ones take minutes per video so): extraction
(in this process: ``workers=0``) and encoding as a shard sample, then clips and the model. Reported: the median of ``--repeats`` runs after one
warm-up, and how many times faster than real time the whole is. The process is pinned to one CPU
with one torch thread. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_model, git_state, loadavg  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
import media  # noqa: E402

from mvmae.eval.predict import Predictor, PredictConfig  # noqa: E402
from mvmae.shards.encoded import encode_video  # noqa: E402
from mvmae.train import checkpoint as ckpt  # noqa: E402
from mvmae.train.config import config_to_dict, load_config  # noqa: E402
from mvmae.train.finetune import FinetuneConfig  # noqa: E402
from mvmae.train.model import build_classifier  # noqa: E402

FPS, SIZE, NUM_CLASSES = 25, (480, 854), 10
MODELS = {
    "micro, motion only (2 x 16 frames, 8 x 8 cells)": {
        "model.inputs": "mv", "model.motion_size": "micro", "model.num_segments": 2, "model.dim": 32,
        "model.temporal_heads": 4, "tokens.num_frames": 16, "tokens.mv_size": 8, "tokens.tubelet_frames": 4},
    "small, motion only (defaults otherwise)": {"model.inputs": "mv"},
    "small + ViT-B/16 (the defaults)": {},
}


def make_checkpoint(folder: Path, name: str, overrides: dict) -> Path:
    """A classifier checkpoint of random weights, as ``mvmae train`` writes one."""
    cfg = load_config(FinetuneConfig, None, {"train": ["unused.tar"], "model.num_classes": NUM_CLASSES, **overrides})
    model = build_classifier(cfg.model, cfg.tokens)
    extra = {"kind": "classifier", "classes": [f"class{i}" for i in range(NUM_CLASSES)], "ema": None,
             "extraction": {"grid": 8, "iframe_short_side": 256, "raw": False, "skip_loop_filter": "none"}}
    state = {ckpt.MODEL: model.state_dict(), ckpt.CONFIG: config_to_dict(cfg), ckpt.EXTRA: extra}
    return ckpt.save_checkpoint(folder / f"{name}.pt", state)


def time_predict(predictor: Predictor, clip: Path) -> tuple[float, float]:
    """(seconds to extract and encode, seconds to cut the views and run the model)."""
    t0 = time.perf_counter()
    raw, error = encode_video(str(clip), predictor.extract)
    assert error is None, error
    t1 = time.perf_counter()
    prediction = predictor.predict(str(clip), raw)
    assert prediction.error is None, prediction.error
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mvmae-bench")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    num_frames = round(args.seconds * FPS)
    clip = args.cache_dir / f"pan_{SIZE[0]}p_{num_frames}.mp4"
    if not clip.exists():
        media.make_pan_clip(clip, vx=2.0, vy=-1.0, num_frames=num_frames, size=SIZE, fps=FPS, gop=50)
    print(f"# predict speed, 1 core: {cpu_model()}; {git_state()}; load {loadavg()}")
    print(f"clip: {SIZE[1]}x{SIZE[0]}, {num_frames} frames, {args.seconds:g} s; median of {args.repeats} runs\n")
    print("| model | views | extract + encode s | views + model s | total s | x real time |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in MODELS.items():
            path = make_checkpoint(Path(tmp), f"m{len(name)}", overrides)
            for clips, crops in ((1, 1), (4, 2)) if name.startswith("micro") else ((1, 1),):
                predictor = Predictor(PredictConfig(str(path), clips=clips, crops=crops, workers=0, device="cpu"))
                time_predict(predictor, clip)  # warm-up: imports, torch's first calls
                runs = [time_predict(predictor, clip) for _ in range(args.repeats)]
                extract = statistics.median(r[0] for r in runs)
                model = statistics.median(r[1] for r in runs)
                total = statistics.median(sum(r) for r in runs)
                print(f"| {name} | {clips * crops} | {extract:.2f} | {model:.2f} | {total:.2f} | "
                      f"{args.seconds / total:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
