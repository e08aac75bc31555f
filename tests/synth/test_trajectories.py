"""The trajectories preset's classes, checked on the ground-truth paths (no video: cheap).

Each class must show its defining property in the camera-compensated actor path, at any
orientation, speed and start time; and the mean velocity over a clip must not give the class away.
"""

from __future__ import annotations

import numpy as np
import pytest

from mvmae.synth import FLIP_PAIRS, TRAJECTORIES, SynthConfig, plan_trajectory

CFG = SynthConfig(preset="trajectories")
NAMES = list(TRAJECTORIES)
CLIPS = 16  # per class, for the shape properties


def _paths(name: str, n: int = CLIPS, seed: int = 11):
    c = NAMES.index(name)
    return [plan_trajectory(name, CFG, np.random.default_rng([seed, c, i])) for i in range(n)]


def _moving(truth) -> np.ndarray:
    """Velocities (N, 2) px per frame of the frames where the actor moves at all."""
    v = truth.world_velocity
    return v[np.hypot(v[:, 0], v[:, 1]) > 0.05 * truth.speed_px_per_frame]


def _heading(v: np.ndarray) -> np.ndarray:
    """Heading (N,) rad, counter-clockwise on screen (y down), unwrapped, from its first value."""
    h = np.unwrap(np.arctan2(-v[:, 1], v[:, 0]))
    return h - h[0]


@pytest.mark.parametrize("name, lo, hi", [
    ("turn_left", 70, 110), ("turn_right", -110, -70), ("circle_ccw", 260, 460),
    ("circle_cw", -460, -260), ("straight", -1, 1), ("stop_and_go", -1, 1),
])
def test_net_turn_on_screen(name, lo, hi):
    """The heading's net change, counter-clockwise on screen positive: the sign of a turn."""
    for truth in _paths(name):
        net = np.rad2deg(_heading(_moving(truth))[-1])
        assert lo <= net <= hi, (name, truth.angle, net)


@pytest.mark.parametrize("name, turn", [("u_turn", 180), ("loop", 360)])
def test_unsigned_turns(name, turn):
    for truth in _paths(name):
        net = abs(np.rad2deg(_heading(_moving(truth))[-1]))
        assert abs(net - turn) < 20, (name, net)


def test_flip_swaps_the_mirror_pairs():
    """A horizontal flip (x -> -x) reverses the turn: turn_left's flipped path turns right."""
    for name, other in FLIP_PAIRS.items():
        for truth in _paths(name, 4):
            v = _moving(truth) * np.array([-1.0, 1.0])
            flipped = np.rad2deg(_heading(v)[-1])
            ref = np.rad2deg(_heading(_moving(_paths(other, 1)[0]))[-1])
            assert np.sign(flipped) == np.sign(ref) and abs(flipped) > 60


def test_straight_keeps_its_speed_and_stop_and_go_stops_in_the_middle():
    for truth in _paths("straight"):
        speed = np.hypot(*_moving(truth).T)
        assert speed.std() < 0.02 * speed.mean()
    for truth in _paths("stop_and_go"):
        v = truth.world_velocity[truth.start_frame:]
        speed = np.hypot(v[:, 0], v[:, 1])
        n = len(speed)
        assert speed[n // 3: 2 * n // 3].min() < 0.05 * truth.speed_px_per_frame
        assert speed[: n // 6].min() > 0.8 * truth.speed_px_per_frame  # going at the start ...
        assert speed[-n // 6:].min() > 0.8 * truth.speed_px_per_frame  # ... and at the end


def test_back_and_forth_reverses_along_one_line():
    for truth in _paths("back_and_forth"):
        v = _moving(truth)
        axis = v[np.argmax(np.hypot(*v.T))] / np.hypot(*v[np.argmax(np.hypot(*v.T))])
        along, across = v @ axis, v @ np.array([-axis[1], axis[0]])
        assert np.abs(across).max() < 1e-6 * truth.speed_px_per_frame + 1e-9
        reversals = np.count_nonzero(np.diff(np.sign(along[np.abs(along) > 1e-3])))
        assert reversals in (2, 3), reversals


def test_zigzag_swings_both_ways_without_turning_round():
    """zigzag: the heading swings to either side of its middle at least 3 times, never by more than
    the 60 deg of its legs: the path goes on in one overall direction."""
    for truth in _paths("zigzag"):
        h = np.rad2deg(_heading(_moving(truth)))
        h = h - (h.max() + h.min()) / 2  # about the middle of its swings
        changes = np.count_nonzero(np.diff(np.sign(h[np.abs(h) > 20])))
        assert changes >= 3 and np.abs(h).max() < 65, (changes, np.abs(h).max())


def test_s_curve_swings_once_each_way_and_ends_straight_on():
    for truth in _paths("s_curve"):
        h = np.rad2deg(_heading(_moving(truth)))
        assert h.max() > 50 and h.min() < -50 and abs(h[-1]) < 20, (h.max(), h.min(), h[-1])
        first_side = np.sign(h[np.argmax(np.abs(h) > 30)])
        assert first_side * h[: len(h) // 2].mean() > 0  # one side in the first half ...
        assert first_side * h[len(h) // 2:].mean() < 0  # ... the other in the second


def test_figure_eight_turns_a_loop_each_way():
    for truth in _paths("figure_eight"):
        h = np.rad2deg(_heading(_moving(truth)))
        peak = h[np.argmax(np.abs(h))]
        assert 0.75 * 360 < abs(peak) < 1.25 * 360 and abs(h[-1]) < 20, (peak, h[-1])


def test_random_start_time_speed_and_view():
    """Still for the first 0-20% of the frames, mean speed in range (or fitted down), in view."""
    h, w = CFG.size
    starts, speeds = [], []
    for name in NAMES:
        for truth in _paths(name, 6, seed=3):
            v = truth.world_velocity
            assert np.abs(v[: truth.start_frame]).max(initial=0) < 1e-9
            assert 0 <= truth.start_frame <= 0.2 * CFG.num_frames
            moving = np.hypot(v[truth.start_frame:, 0], v[truth.start_frame:, 1]).mean()
            assert moving == pytest.approx(truth.speed_px_per_frame, rel=1e-6)
            assert truth.speed_px_per_frame <= CFG.speed_range[1] + 1e-9
            half = CFG.actor_px / 2
            assert (truth.actor_xy >= half).all() and (truth.actor_xy <= np.array([w, h]) - half).all()
            starts.append(truth.start_frame)
            speeds.append(truth.speed_px_per_frame)
    assert len(set(starts)) > 5 and np.ptp(speeds) > 0.8


def _mean_velocities(clips_per_class: int, seed: int = 5):
    X, y = [], []
    for c, name in enumerate(NAMES):
        for i in range(clips_per_class):
            X.append(plan_trajectory(name, CFG, np.random.default_rng([seed, c, i])).world_velocity.mean(0))
            y.append(c)
    return np.array(X), np.array(y)


def test_mean_velocity_is_no_shortcut():
    """A nearest-class-mean classifier on the clip's mean compensated velocity (dx, dy) stays near
    chance (1/12), the direction of the mean velocity is uniform in every class, and its length
    cannot tell the mirror pairs apart. (The length does sort clips that come back near their
    start from those that travel: see the module docstring of mvmae.synth.trajectories.)"""
    X, y = _mean_velocities(100)
    train = np.arange(len(y)) % 2 == 0
    means = np.stack([X[train & (y == c)].mean(0) for c in range(len(NAMES))])  # (12, 2)
    pred = ((X[~train][:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[~train]).mean() < 2.5 / len(NAMES)
    unit = X / np.maximum(np.hypot(X[:, 0], X[:, 1]), 1e-12)[:, None]
    for c in range(len(NAMES)):
        assert np.hypot(*unit[y == c].mean(0)) < 0.3, NAMES[c]  # mean resultant length
    length = np.hypot(X[:, 0], X[:, 1])
    for a, b in [("turn_left", "turn_right"), ("circle_ccw", "circle_cw")]:
        ia, ib = NAMES.index(a), NAMES.index(b)
        ref = np.array([length[train & (y == ia)].mean(), length[train & (y == ib)].mean()])
        sel = ~train & ((y == ia) | (y == ib))
        pred = np.where(np.abs(length[sel][:, None] - ref).argmin(1) == 0, ia, ib)
        assert (pred == y[sel]).mean() < 0.7, (a, b)
