"""Rendering one clip of the ``trajectories`` preset, with its ground truth.

A clip: the shipped photo blended with value noise as ground (:mod:`mvmae.synth.ground`), seen by
a camera that pans at a random velocity that itself changes slowly; one labelled actor (a
textured disc, ``actor_px`` wide) following its class's path over the ground
(:mod:`mvmae.synth.trajectories`); one or two distractors (smaller squares, another look) moving
straight or in a random walk and bouncing off the frame's edges. The actor is drawn last (on top).

When a path would leave the frame, the actor's speed (and, if the pan alone would, the pan) is
scaled down until it fits: ``TrajectoryTruth.fit`` records it, and ``speed_px_per_frame`` is the
speed after the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvmae.synth.config import SynthConfig
from mvmae.synth.ground import crop, photo_ground
from mvmae.synth.sprites import composite, disc_sprite, square_sprite
from mvmae.synth.trajectories import world_velocity

DISTRACTOR_PX = (16, 26)  # side of a distractor square, px (uniform)


@dataclass
class TrajectoryTruth:
    """What a trajectories clip shows, in screen px (x right, y down), T = num_frames.

    actor_xy: float64 (T, 2) the labelled actor's centre on screen. camera_xy: float64 (T, 2) the
    camera's offset from its first position (the ground moves by ``-diff(camera_xy)`` on screen).
    distractor_xy: float64 (K, T, 2) the distractors' centres on screen. speed_px_per_frame: the
    actor's mean speed over the ground. angle: the path's orientation, rad, counter-clockwise on
    screen. start_frame: the first frame the actor moves towards. fit: the factor its speed was
    scaled by to stay in view (1.0 = not scaled).
    """

    name: str
    actor_xy: np.ndarray
    camera_xy: np.ndarray
    distractor_xy: np.ndarray
    speed_px_per_frame: float
    angle: float
    start_frame: int
    fit: float

    @property
    def world_xy(self) -> np.ndarray:
        """float64 (T, 2): the actor's path over the ground (camera-compensated), px."""
        return self.actor_xy + self.camera_xy

    @property
    def world_velocity(self) -> np.ndarray:
        """float64 (T - 1, 2): the actor's velocity over the ground, px per frame: what an MV
        field minus the camera's motion shows in the actor's cells."""
        return np.diff(self.world_xy, axis=0)


def plan_trajectory(name: str, cfg: SynthConfig, rng: np.random.Generator) -> TrajectoryTruth:
    """The actor's path and the camera's of one clip of class ``name``, without rendering (and
    without distractors): the first draws of :func:`render_trajectory` from ``rng``, so a
    generator in the same state gives the same actor path there. Cheap: for statistics."""
    h, w = cfg.size
    num_frames, a = cfg.num_frames, cfg.actor_px
    start_frame = int(rng.integers(0, int(cfg.start_ratio_max * num_frames) + 1))
    speed = rng.uniform(*cfg.speed_range)
    angle = rng.uniform(0, 2 * np.pi)
    velocity = world_velocity(name, num_frames, speed, angle, start_frame, rng)  # (T - 1, 2)
    world = np.concatenate([np.zeros((1, 2)), np.cumsum(velocity, axis=0)])  # (T, 2)
    camera = _camera_path(cfg, rng)  # (T, 2)
    room = np.array([w, h], np.float64) - a - 2
    camera *= min(1.0, float((room / np.maximum(np.ptp(camera, axis=0), 1e-9)).min()))
    fit = _fit(world, camera, room)
    rel = fit * world - camera  # (T, 2) the actor on screen, relative to its start
    lo = -rel.min(0) + a / 2 + 1
    hi = np.array([w, h]) - rel.max(0) - a / 2 - 1
    actor_xy = rng.uniform(lo, np.maximum(lo, hi)) + rel
    return TrajectoryTruth(name, actor_xy, camera, np.zeros((0, num_frames, 2)), speed * fit,
                           angle, start_frame, fit)


def render_trajectory(name: str, cfg: SynthConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, TrajectoryTruth]:
    """Frames uint8 (T, H, W, 3) of one clip of trajectory class ``name``, and its truth."""
    h, w = cfg.size
    truth = plan_trajectory(name, cfg, rng)
    camera = truth.camera_xy
    span = np.ceil(np.ptp(camera, axis=0)).astype(int)  # (2,) x, y
    origin = 1 - camera.min(0)  # canvas offset of the first view
    ground = photo_ground(rng, h + span[1] + 3, w + span[0] + 3)
    actor = disc_sprite(rng, cfg.actor_px)
    distractors, truth.distractor_xy = _distractors(cfg, camera, rng)
    frames = np.empty((cfg.num_frames, h, w, 3), np.uint8)
    for k in range(cfg.num_frames):
        ox, oy = origin + camera[k]
        frame = crop(ground, oy, ox, h, w)
        for sprite, xy in zip(distractors, truth.distractor_xy):
            composite(frame, sprite, xy[k])
        composite(frame, actor, truth.actor_xy[k])
        frames[k] = np.clip(frame, 0, 255)
    return frames, truth


def _camera_path(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Camera offset float64 (T, 2) px from its first position: a pan of uniform +-drift px per
    frame per axis whose velocity changes linearly by uniform +-drift_change over the clip."""
    k = np.arange(cfg.num_frames, dtype=np.float64)[:, None]
    pan = rng.uniform(-cfg.drift_px_per_frame, cfg.drift_px_per_frame, 2)
    change = rng.uniform(-cfg.drift_change_px_per_frame, cfg.drift_change_px_per_frame, 2)
    return pan * k + 0.5 * change * k ** 2 / (cfg.num_frames - 1)


def _fit(world: np.ndarray, camera: np.ndarray, room: np.ndarray) -> float:
    """The largest factor f <= 1 for which the screen path f * world - camera spans <= room."""
    def fits(f: float) -> bool:
        return bool((np.ptp(f * world - camera, axis=0) <= room).all())

    if fits(1.0):
        return 1.0
    lo, hi = 0.0, 1.0  # fits(0) holds: the camera alone was scaled to fit
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _distractors(cfg: SynthConfig, camera: np.ndarray, rng: np.random.Generator):
    """Sprites and screen centres float64 (K, T, 2) of K in ``cfg.num_distractors`` distractors:
    straight (0.4-1.6 px per frame) or a random walk over the ground, bouncing off the edges."""
    h, w = cfg.size
    count = int(rng.integers(cfg.num_distractors[0], cfg.num_distractors[1] + 1))
    sprites, paths = [], np.zeros((count, cfg.num_frames, 2))
    for i in range(count):
        size = int(rng.integers(DISTRACTOR_PX[0], DISTRACTOR_PX[1] + 1))
        sprites.append(square_sprite(rng, size))
        lo, hi = np.full(2, size / 2 + 1), np.array([w, h]) - size / 2 - 1
        pos = rng.uniform(lo, hi)
        heading = rng.uniform(0, 2 * np.pi)
        vel = rng.uniform(0.4, 1.6) * np.array([math.cos(heading), math.sin(heading)])
        walk = rng.random() < 0.5
        paths[i, 0] = pos
        for k in range(1, cfg.num_frames):
            if walk:  # a smooth random walk: the velocity drifts, capped at 2 px per frame
                vel = 0.9 * vel + rng.normal(0, 0.3, 2)
                vel *= min(1.0, 2.0 / max(float(np.hypot(*vel)), 1e-9))
            pan = camera[k] - camera[k - 1]  # it moves over the ground: on screen, minus the pan
            out = (pos + vel - pan < lo) | (pos + vel - pan > hi)
            vel = np.where(out, -vel, vel)  # bounce: the velocity over the ground turns back
            pos = np.clip(pos + vel - pan, lo, hi)
            paths[i, k] = pos
    return sprites, paths
