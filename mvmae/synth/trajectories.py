"""The ``trajectories`` preset's classes: path SHAPES told apart by how the velocity evolves.

Each class is a profile over the moving part of a clip, s in [0, 1]: a heading ``theta(s)`` (rad,
counter-clockwise AS SEEN ON SCREEN, 0 = the path's own "forward") and a signed speed factor
``m(s)`` (negative = moving backwards along the heading). A clip rotates the whole profile by a
uniform random angle, scales it to a random mean speed (px per frame) and may start it late, so
neither the mean velocity nor any single frame tells the classes apart: only the order of what
the velocity does over time does (see :func:`velocity_profile`).

Screen coordinates have y pointing down, so a heading theta moves along (cos theta, -sin theta).
``turn_left`` turns counter-clockwise on screen, ``turn_right`` clockwise; a horizontal flip of
the video swaps them, and swaps ``circle_cw`` with ``circle_ccw`` (:data:`FLIP_PAIRS`): train
with flips off (``--flip-prob 0``) or swap those labels. Classes whose turn sign is not their
definition (``u_turn``, ``zigzag``, ``s_curve``, ``figure_eight``, ``loop``) draw it at random,
so a flip maps each of them onto itself.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Profile = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _ramp(s: np.ndarray, a: float, b: float) -> np.ndarray:
    """0 before a, 1 after b, a smoothstep in between."""
    x = np.clip((s - a) / max(b - a, 1e-9), 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _turn(angle: float) -> Profile:
    """Straight, a turn of ``angle`` (rad, randomised by +-15 deg) around a random moment, straight."""
    def profile(s, rng):
        c, w = rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
        a = angle + np.sign(angle) * np.deg2rad(rng.uniform(-15, 15))
        return a * _ramp(s, c - w / 2, c + w / 2), np.ones_like(s)
    return profile


def _u_turn(s, rng):
    c, w = rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.35)
    return _sign(rng) * np.pi * _ramp(s, c - w / 2, c + w / 2), np.ones_like(s)


def _straight(s, rng):
    return np.zeros_like(s), np.ones_like(s)


def _zigzag(s, rng):
    """Heading alternating +-40..60 deg over 4-6 legs, with short smooth switches."""
    legs, amp = int(rng.integers(4, 7)), np.deg2rad(rng.uniform(40, 60))
    wave = np.tanh(4 * np.sin(np.pi * legs * s)) / np.tanh(4)
    return _sign(rng) * amp * wave, np.ones_like(s)


def _stop_and_go(s, rng):
    """Straight, slowing to a stop in the middle for 20-30% of the time, then going on."""
    c, half, r = rng.uniform(0.42, 0.58), rng.uniform(0.1, 0.15), 0.08
    m = 1 - _ramp(s, c - half - r, c - half) * (1 - _ramp(s, c + half, c + half + r))
    return np.zeros_like(s), m


def _circle(direction: float) -> Profile:
    """0.75-1.25 turns at constant speed; direction +1 = counter-clockwise on screen. (Not exactly
    one, so that the net displacement varies around zero rather than sitting on it.)"""
    def profile(s, rng):
        return direction * 2 * np.pi * rng.uniform(0.75, 1.25) * s, np.ones_like(s)
    return profile


def _back_and_forth(s, rng):
    """Along one line: forward, back, forward (2 or 3 reversals through a standstill), legs of
    unequal length."""
    # A non-integer number of half-periods (1.7-3.3) and a phase: 2 or 3 reversals, and legs
    # that do not cancel exactly, so the net displacement varies around zero.
    halves, phase = rng.uniform(1.7, 3.3), rng.uniform(-0.4, 0.4)
    return np.zeros_like(s), np.tanh(3 * np.cos(np.pi * halves * s + phase))


def _s_curve(s, rng):
    """One smooth wave: the heading swings to one side by 60-80 deg, then to the other."""
    amp = np.deg2rad(rng.uniform(60, 80))
    return _sign(rng) * amp * np.sin(2 * np.pi * s), np.ones_like(s)


def _figure_eight(s, rng):
    """One loop one way, then one loop the other way: the heading turns 0.8-1.2 x 360 deg and
    back (the first loop takes 40-60% of the time, so the two differ in size)."""
    c, turns = rng.uniform(0.4, 0.6), rng.uniform(0.8, 1.2)
    return _sign(rng) * 2 * np.pi * turns * np.minimum(s / c, (1 - s) / (1 - c)), np.ones_like(s)


def _loop(s, rng):
    """Straight, one full loop (constant curvature) somewhere in the middle, straight on."""
    c, w = rng.uniform(0.45, 0.55), rng.uniform(0.35, 0.5)
    turn = np.clip((s - (c - w / 2)) / w, 0.0, 1.0)
    return _sign(rng) * 2 * np.pi * turn, np.ones_like(s)


# Ordered so that ``--classes N`` keeps the mirror pairs first.
TRAJECTORIES: dict[str, Profile] = {
    "turn_left": _turn(np.pi / 2),
    "turn_right": _turn(-np.pi / 2),
    "circle_ccw": _circle(1.0),
    "circle_cw": _circle(-1.0),
    "straight": _straight,
    "u_turn": _u_turn,
    "zigzag": _zigzag,
    "stop_and_go": _stop_and_go,
    "back_and_forth": _back_and_forth,
    "s_curve": _s_curve,
    "figure_eight": _figure_eight,
    "loop": _loop,
}

# What a horizontal flip of the video turns each class into (classes not listed map to themselves).
FLIP_PAIRS: dict[str, str] = {"turn_left": "turn_right", "turn_right": "turn_left",
                              "circle_ccw": "circle_cw", "circle_cw": "circle_ccw"}


def velocity_profile(name: str, num_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-mean-speed velocities float64 (num_steps, 2) (dx, dy) of class ``name`` in its own
    frame (forward = +x), sampled at the middle of each frame step: mean of |velocity| is 1."""
    s = (np.arange(num_steps) + 0.5) / num_steps
    theta, m = TRAJECTORIES[name](s, rng)
    m = np.asarray(m, np.float64)
    m = m / max(np.abs(m).mean(), 1e-9)  # the mean speed is the clip's drawn speed, whatever the class
    return m[:, None] * np.stack([np.cos(theta), -np.sin(theta)], -1)


def world_velocity(name: str, num_frames: int, speed: float, angle: float, start_frame: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Actor velocity over the ground, float64 (num_frames - 1, 2) px per frame step (dx, dy),
    y down: still for the first ``start_frame`` steps, then the class profile rotated by
    ``angle`` (rad, counter-clockwise on screen) at mean speed ``speed``."""
    moving = num_frames - 1 - start_frame
    v = np.zeros((num_frames - 1, 2))
    profile = velocity_profile(name, moving, rng) * speed  # (moving, 2)
    c, s = np.cos(angle), np.sin(angle)
    # Counter-clockwise on screen (y down) is the matrix [[c, s], [-s, c]] applied to (dx, dy).
    v[start_frame:, 0] = c * profile[:, 0] + s * profile[:, 1]
    v[start_frame:, 1] = -s * profile[:, 0] + c * profile[:, 1]
    return v
