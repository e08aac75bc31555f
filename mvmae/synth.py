"""``mvmae synth``: a synthetic action dataset whose classes differ by motion alone.

Top-down view of a textured actor moving over textured ground, with a drifting camera, encoded as
real H.264 (libx264: B-frames, several references, fixed GOP). Every clip draws a new actor
texture, ground patch, start position, speed and camera drift, so a single frame carries no
class information: only the actor's motion relative to the ground does. Used by the tests, the
demo and the benchmarks; also handy to smoke-test a training setup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import av
import numpy as np

# Class name -> actor displacement (px) at time t in [0, 1] for a unit amplitude; each clip scales
# it by its own amplitude. All start at (0, 0).
PATTERNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "walk_right": lambda t: np.stack([t, 0 * t], -1),
    "walk_left": lambda t: np.stack([-t, 0 * t], -1),
    "walk_down": lambda t: np.stack([0 * t, t], -1),
    "walk_up": lambda t: np.stack([0 * t, -t], -1),
    "circle_cw": lambda t: 0.35 * np.stack([np.sin(2 * np.pi * t), 1 - np.cos(2 * np.pi * t)], -1),
    "circle_ccw": lambda t: 0.35 * np.stack([np.sin(2 * np.pi * t), np.cos(2 * np.pi * t) - 1], -1),
    "pace_horizontal": lambda t: 0.3 * np.stack([np.sin(4 * np.pi * t), 0 * t], -1),
    "pace_vertical": lambda t: 0.3 * np.stack([0 * t, np.sin(4 * np.pi * t)], -1),
}


@dataclass
class SynthConfig:
    """num_classes: first N of PATTERNS. size: (H, W) px, even. num_frames per clip.
    val_ratio: share of each class's clips listed in val.txt. Encoder: bframes, refs, gop, crf."""

    num_classes: int = 4
    clips_per_class: int = 8
    size: tuple[int, int] = (128, 160)
    num_frames: int = 48
    fps: int = 25
    seed: int = 0
    val_ratio: float = 0.25
    bframes: int = 2
    refs: int = 3
    gop: int = 24
    crf: int = 23
    actor_px: int = 24

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(PATTERNS):
            raise ValueError(f"num_classes must be 2..{len(PATTERNS)}, got {self.num_classes}")
        if self.clips_per_class < 1 or self.num_frames < 2:
            raise ValueError("clips_per_class must be >= 1 and num_frames >= 2")
        h, w = self.size
        if h % 2 or w % 2 or min(h, w) < 4 * self.actor_px:
            raise ValueError(f"size must be even and at least {4 * self.actor_px} px, got {self.size}")
        if not 0 <= self.val_ratio < 1:
            raise ValueError(f"val_ratio must be in [0, 1), got {self.val_ratio}")


def x264_options(bframes: int, refs: int, gop: int, crf: int) -> dict[str, str]:
    """libx264 options for a fixed structure: exactly ``bframes`` B-frames, an IDR every ``gop``.

    b-adapt=0 keeps the B-frame pattern fixed (adaptive placement drops B-frames on fast motion);
    mbtree=0 and one thread make this libx264 bit-exact from run to run.
    """
    return {
        "bf": str(bframes), "refs": str(refs), "g": str(gop), "keyint_min": str(gop),
        "sc_threshold": "0", "crf": str(crf), "threads": "1",
        "x264-params": "b-adapt=0:mbtree=0:log-level=error",
    }


def encode_h264(path: str | Path, frames: Iterable[np.ndarray], fps: int,
                options: dict[str, str], pix_fmt: str = "yuv420p", codec: str = "libx264",
                container_options: dict[str, str] | None = None) -> Path:
    """Encode RGB uint8 frames (H, W, 3) into ``path`` (container from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = None
        for t, rgb in enumerate(frames):
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = pix_fmt
                stream.options = dict(options)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts, frame.time_base = t, Fraction(1, fps)
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError(f"{path}: no frames to encode")
        container.mux(stream.encode(None))
    return path


def _smooth_texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise: random colours on a coarse lattice, bilinearly upsampled. float32 (h, w, 3)."""
    gh, gw = h // cell + 2, w // cell + 2
    lattice = rng.uniform(40, 215, (gh, gw, 3)).astype(np.float32)
    ys, xs = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def render_clip(pattern: str, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Frames uint8 (T, H, W, 3) of one clip of ``pattern``."""
    h, w = cfg.size
    t = np.linspace(0, 1, cfg.num_frames)
    margin = 4 * cfg.num_frames  # room for the camera drift (< 2 px per frame either way)
    ground = _smooth_texture(rng, h + 2 * margin, w + 2 * margin, cell=int(rng.integers(6, 14)))
    ground += rng.normal(0, 12, ground.shape).astype(np.float32)  # fine texture for the encoder
    drift = rng.uniform(-1.5, 1.5, 2)  # camera px per frame (x, y)
    amplitude = rng.uniform(0.45, 0.6) * min(h, w)
    # The actor moves over the ground, so on screen it also moves with the ground (-drift).
    frames_idx = np.arange(cfg.num_frames)[:, None]
    shape = PATTERNS[pattern](t)  # (T, 2) x, y for a unit amplitude
    path = shape * amplitude - drift * frames_idx  # (T, 2) px relative to the start
    room = np.array([w, h]) - 2 * cfg.actor_px - 2
    fit = min(1.0, float((room / np.maximum(path.max(0) - path.min(0), 1e-6)).min()))
    drift, amplitude = drift * fit, amplitude * fit  # shrink both to keep the actor in view
    path = shape * amplitude - drift * frames_idx
    a = cfg.actor_px
    lo = -path.min(0) + a  # keep the whole trajectory inside the frame
    hi = np.array([w, h]) - path.max(0) - 2 * a
    start = rng.uniform(lo, np.maximum(lo, hi))
    sprite = _smooth_texture(rng, a, a, cell=4) * rng.uniform(0.5, 1.5, 3).astype(np.float32)
    yy, xx = np.mgrid[:a, :a]
    mask = (((yy - a / 2 + 0.5) / (a / 2)) ** 2 + ((xx - a / 2 + 0.5) / (a / 2)) ** 2) <= 1.0
    frames = np.empty((cfg.num_frames, h, w, 3), np.uint8)
    for k in range(cfg.num_frames):
        ox, oy = margin + drift * k  # camera offset into the ground
        frame = _crop(ground, oy, ox, h, w)
        px, py = (start + path[k]).round().astype(int)
        region = frame[py:py + a, px:px + a]
        region[mask] = sprite[mask]
        frames[k] = np.clip(frame, 0, 255)
    return frames


def _crop(img: np.ndarray, y: float, x: float, h: int, w: int) -> np.ndarray:
    """A bilinear (sub-pixel) crop of (h, w) at (y, x)."""
    iy, ix = int(math.floor(y)), int(math.floor(x))
    fy, fx = y - iy, x - ix
    c = img[iy:iy + h + 1, ix:ix + w + 1]
    return ((c[:h, :w] * (1 - fx) + c[:h, 1:] * fx) * (1 - fy)
            + (c[1:, :w] * (1 - fx) + c[1:, 1:] * fx) * fy)


def make_dataset(out_dir: str | Path, cfg: SynthConfig,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Write ``videos/<class>/<class>_<i>.mp4``, ``train.txt``, ``val.txt``, ``classes.txt``.

    List lines are ``videos/<class>/<file> <class name>`` (paths relative to the list file).
    Returns the paths of the list files. Deterministic for a seed.
    """
    out = Path(out_dir)
    classes = list(PATTERNS)[: cfg.num_classes]
    rng = np.random.default_rng(cfg.seed)
    options = x264_options(cfg.bframes, cfg.refs, cfg.gop, cfg.crf)
    num_val = round(cfg.clips_per_class * cfg.val_ratio)
    if cfg.val_ratio > 0 and cfg.clips_per_class > 1:
        num_val = min(max(num_val, 1), cfg.clips_per_class - 1)  # at least one clip on each side
    train, val = [], []
    total, done = cfg.num_classes * cfg.clips_per_class, 0
    for name in classes:
        for i in range(cfg.clips_per_class):
            rel = f"videos/{name}/{name}_{i:03d}.mp4"
            encode_h264(out / rel, render_clip(name, cfg, rng), cfg.fps, options)
            (val if i < num_val else train).append(f"{rel} {name}")
            done += 1
            if progress:
                progress(done, total)
    lists = {"train": out / "train.txt", "val": out / "val.txt", "classes": out / "classes.txt"}
    lists["train"].write_text("\n".join(train) + "\n")
    lists["val"].write_text("\n".join(val) + ("\n" if val else ""))
    lists["classes"].write_text("\n".join(classes) + "\n")
    return lists
