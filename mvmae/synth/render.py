"""Rendering one clip of the ``basic`` preset (and the preset dispatch of :func:`render_clip`)."""

from __future__ import annotations

import numpy as np

from mvmae.synth.config import SynthConfig
from mvmae.synth.ground import crop, smooth_texture
from mvmae.synth.patterns import PATTERNS
from mvmae.synth.scene import render_trajectory


def render_clip(pattern: str, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Frames uint8 (T, H, W, 3) of one clip of class ``pattern`` of ``cfg.preset`` (for the
    trajectories preset, :func:`mvmae.synth.scene.render_trajectory` also returns the truth)."""
    if cfg.preset == "trajectories":
        return render_trajectory(pattern, cfg, rng)[0]
    return _render_basic(pattern, cfg, rng)


def _render_basic(pattern: str, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    h, w = cfg.size
    t = np.linspace(0, 1, cfg.num_frames)
    margin = 4 * cfg.num_frames  # room for the camera drift (< 2 px per frame either way)
    ground = smooth_texture(rng, h + 2 * margin, w + 2 * margin, cell=int(rng.integers(6, 14)))
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
    sprite = smooth_texture(rng, a, a, cell=4) * rng.uniform(0.5, 1.5, 3).astype(np.float32)
    yy, xx = np.mgrid[:a, :a]
    mask = (((yy - a / 2 + 0.5) / (a / 2)) ** 2 + ((xx - a / 2 + 0.5) / (a / 2)) ** 2) <= 1.0
    frames = np.empty((cfg.num_frames, h, w, 3), np.uint8)
    for k in range(cfg.num_frames):
        ox, oy = margin + drift * k  # camera offset into the ground
        frame = crop(ground, oy, ox, h, w)
        px, py = (start + path[k]).round().astype(int)
        region = frame[py:py + a, px:px + a]
        region[mask] = sprite[mask]
        frames[k] = np.clip(frame, 0, 255)
    return frames
