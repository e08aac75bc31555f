"""The ``basic`` preset's classes: displacement patterns of one actor (direction-defined)."""

from __future__ import annotations

from typing import Callable

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
