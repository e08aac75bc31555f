"""Sprites (premultiplied colour + alpha) and their sub-pixel compositing onto a frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvmae.synth.ground import smooth_texture


@dataclass(frozen=True)
class Sprite:
    """colour: float32 (s, s, 3) premultiplied by alpha; alpha: float32 (s, s) in [0, 1]."""

    colour: np.ndarray
    alpha: np.ndarray

    @property
    def size(self) -> int:
        return self.alpha.shape[0]


def disc_sprite(rng: np.random.Generator, size: int) -> Sprite:
    """The labelled actor's look: a round, finely textured disc with a dark rim (anti-aliased)."""
    texture = smooth_texture(rng, size, size, cell=int(rng.integers(3, 7)))
    texture *= rng.uniform(0.6, 1.4, 3).astype(np.float32)
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - c, xx - c)
    alpha = np.clip(size / 2 - r, 0, 1).astype(np.float32)
    rim = np.clip(r - (size / 2 - 3), 0, 1)[..., None]  # the outer 2-3 px darkened
    colour = texture * (1 - 0.7 * rim)
    return Sprite(np.clip(colour, 0, 255).astype(np.float32) * alpha[..., None], alpha)


def square_sprite(rng: np.random.Generator, size: int) -> Sprite:
    """A distractor's look: a square of coarse blotches, flat-coloured edges, no rim."""
    texture = smooth_texture(rng, size, size, cell=int(rng.integers(6, 12)))
    texture = 0.4 * texture + 0.6 * rng.uniform(0, 255, 3).astype(np.float32)  # a strong tint
    return Sprite(texture.astype(np.float32), np.ones((size, size), np.float32))


def composite(frame: np.ndarray, sprite: Sprite, centre: np.ndarray) -> None:
    """Blend ``sprite`` onto ``frame`` float32 (H, W, 3) in place, its centre at ``centre`` (x, y)
    px with sub-pixel precision (bilinear shift); parts outside the frame are cut off."""
    s = sprite.size
    x, y = float(centre[0]) - (s - 1) / 2, float(centre[1]) - (s - 1) / 2  # top-left pixel centre
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    colour = _shift(sprite.colour, fx, fy)  # (s + 1, s + 1, 3)
    alpha = _shift(sprite.alpha[..., None], fx, fy)  # (s + 1, s + 1, 1)
    h, w = frame.shape[:2]
    y0, x0 = max(iy, 0), max(ix, 0)
    y1, x1 = min(iy + s + 1, h), min(ix + s + 1, w)
    if y1 <= y0 or x1 <= x0:
        return
    sub = (slice(y0 - iy, y1 - iy), slice(x0 - ix, x1 - ix))
    region = frame[y0:y1, x0:x1]
    region *= 1 - alpha[sub]
    region += colour[sub]


def _shift(img: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """``img`` (s, s, C) moved by (fx, fy) in [0, 1) px: (s + 1, s + 1, C), zeros outside."""
    s, c = img.shape[0], img.shape[2]
    pad = np.zeros((s + 2, s + 2, c), np.float32)
    pad[1:s + 1, 1:s + 1] = img
    return ((1 - fy) * ((1 - fx) * pad[1:, 1:] + fx * pad[1:, :-1])
            + fy * ((1 - fx) * pad[:-1, 1:] + fx * pad[:-1, :-1]))
