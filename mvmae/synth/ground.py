"""Ground textures: value noise (both presets) and the shipped real photo (``trajectories``).

The photo is ``data/gravel.jpg``: scikit-image's ``gravel`` sample, CC0 (see ``data/NOTICE.md``),
grey, 512x512. Each clip takes a random crop of it at a random scale, a random quarter-turn and
flip, maps its grey levels onto a random pair of colours and blends it with value noise, so no two
clips share a ground.
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image

PHOTO = "gravel.jpg"


def smooth_texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise: random colours on a coarse lattice, bilinearly upsampled. float32 (h, w, 3)."""
    gh, gw = h // cell + 2, w // cell + 2
    lattice = rng.uniform(40, 215, (gh, gw, 3)).astype(np.float32)
    ys, xs = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def crop(img: np.ndarray, y: float, x: float, h: int, w: int) -> np.ndarray:
    """A bilinear (sub-pixel) crop of (h, w) at (y, x) px of ``img`` (H, W, C); needs one spare
    row and column beyond the crop."""
    iy, ix = int(math.floor(y)), int(math.floor(x))
    fy, fx = y - iy, x - ix
    c = img[iy:iy + h + 1, ix:ix + w + 1]
    return ((c[:h, :w] * (1 - fx) + c[:h, 1:] * fx) * (1 - fy)
            + (c[1:, :w] * (1 - fx) + c[1:, 1:] * fx) * fy)


@lru_cache(maxsize=1)
def photo() -> np.ndarray:
    """The shipped ground photo, grey uint8 (512, 512), read-only."""
    with resources.files("mvmae.synth").joinpath("data", PHOTO).open("rb") as fh:
        img = np.asarray(Image.open(fh).convert("L"))
    img.setflags(write=False)
    return img


def photo_crop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random view of the photo resampled to float32 (h, w) grey levels 0..255: a quarter-turn,
    a flip, a scale of 0.7-1.5 output px per photo px and a random position."""
    img = np.rot90(photo(), int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    side = img.shape[0]
    scale = max(rng.uniform(0.7, 1.5), max(h, w) / side)  # the crop must fit in the photo
    ch, cw = min(side, math.ceil(h / scale)), min(side, math.ceil(w / scale))
    y0, x0 = int(rng.integers(side - ch + 1)), int(rng.integers(side - cw + 1))
    view = Image.fromarray(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw]))
    return np.asarray(view.resize((w, h), Image.BILINEAR), np.float32)


def photo_ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Ground of float32 (h, w, 3), 0..255: the photo coloured by a random pair of colours,
    blended with value noise (photo weight 0.5-0.85)."""
    grey = photo_crop(rng, h, w)[..., None] / 255.0  # (h, w, 1)
    dark, light = rng.uniform(10, 110, 3), rng.uniform(150, 250, 3)
    coloured = dark + grey * (light - dark)  # (h, w, 3)
    noise = smooth_texture(rng, h, w, cell=int(rng.integers(10, 24)))
    weight = rng.uniform(0.5, 0.85)
    return (weight * coloured + (1 - weight) * noise).astype(np.float32)
