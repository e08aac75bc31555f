"""Trajectories clips through real H.264 and the extractor: the MV field shows the true path.

The renderer returns the actor's true path; here the camera-compensated MV field of the actor's
cells (field minus its median, the ground's motion) must move the same way, turn the same way,
and about a tenth of the grid must move in a frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from mvmae.extract.video import extract_video
from mvmae.synth import SynthConfig, encode_h264, plan_trajectory, render_trajectory, x264_options
from mvmae.synth.ground import photo

CFG = SynthConfig(preset="trajectories")
CLASSES = ["turn_left", "turn_right", "circle_ccw", "circle_cw"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """class -> (VideoFields, TrajectoryTruth) of one clip each, real libx264 with B-frames."""
    out = tmp_path_factory.mktemp("scene")
    result = {}
    for c, name in enumerate(CLASSES):
        frames, truth = render_trajectory(name, CFG, np.random.default_rng([21, c]))
        options = x264_options(CFG.bframes, CFG.refs, CFG.gop, CFG.crf)
        path = encode_h264(out / f"{name}.mp4", frames, CFG.fps, options)
        result[name] = (extract_video(path), truth)
    return result


def _compensated(fields, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t's field minus the median of its valid cells: (2, h, w) px per frame, valid (h, w)."""
    valid = fields.valid[t]
    median = np.median(fields.mv[t][:, valid], axis=1)
    return fields.mv[t] - median[:, None, None], valid


def _actor_motion(fields, truth) -> tuple[np.ndarray, np.ndarray]:
    """Measured and true actor velocity (N, 2) px per frame on the frames with enough cells."""
    measured, expected = [], []
    h, w = fields.valid.shape[1:]
    yy, xx = (np.mgrid[:h, :w] + 0.5) * fields.grid  # cell centres, px
    for t in range(1, fields.num_frames):
        if fields.valid[t].sum() < 0.5 * h * w:
            continue  # I-frames
        field, valid = _compensated(fields, t)
        ax, ay = truth.actor_xy[t]
        inside = valid & (np.hypot(xx - ax, yy - ay) < CFG.actor_px / 2 - 6)
        if inside.sum() >= 4:
            measured.append(field[:, inside].mean(axis=1))
            expected.append(truth.world_velocity[t - 1])
    return np.array(measured), np.array(expected)


@pytest.mark.parametrize("name", CLASSES)
def test_actor_cells_move_along_the_true_path(clips, name):
    measured, expected = _actor_motion(*clips[name])
    moving = np.hypot(*expected.T) > 0.5
    assert moving.sum() > 20
    m, e = measured[moving], expected[moving]
    cos = (m * e).sum(1) / (np.hypot(*m.T) * np.hypot(*e.T) + 1e-9)
    assert np.median(cos) > 0.9, np.median(cos)
    assert np.median(np.hypot(*(m - e).T)) < 0.5  # px per frame


@pytest.mark.parametrize("name, sign", [("turn_left", 1), ("turn_right", -1),
                                        ("circle_ccw", 1), ("circle_cw", -1)])
def test_extracted_field_turns_the_right_way(clips, name, sign):
    """The heading of the measured actor motion turns counter-clockwise on screen for turn_left
    and circle_ccw, clockwise for their mirrors: left/right survive the codec and extraction."""
    measured, expected = _actor_motion(*clips[name])
    m = measured[np.hypot(*expected.T) > 0.5]
    heading = np.unwrap(np.arctan2(-m[:, 1], m[:, 0]))  # y down: minus dy is up
    net = np.rad2deg(np.median(heading[-5:]) - np.median(heading[:5]))
    assert sign * net > 45, net


def test_about_a_tenth_of_the_cells_move(clips):
    """Share of valid cells whose compensated motion exceeds 0.5 px per frame (actor and
    distractors), over the inter frames of the clips: 10-15% by design, here 6-20%."""
    shares = []
    for fields, _ in clips.values():
        for t in range(fields.num_frames):
            valid = fields.valid[t]
            if valid.sum() < 0.5 * valid.size:
                continue
            field, _ = _compensated(fields, t)
            shares.append((np.hypot(*field[:, valid]) > 0.5).mean())
    assert 0.06 < np.mean(shares) < 0.2, np.mean(shares)


def test_render_is_deterministic_and_plan_matches():
    a_frames, a = render_trajectory("zigzag", CFG, np.random.default_rng(4))
    b_frames, b = render_trajectory("zigzag", CFG, np.random.default_rng(4))
    assert np.array_equal(a_frames, b_frames) and np.array_equal(a.actor_xy, b.actor_xy)
    plan = plan_trajectory("zigzag", CFG, np.random.default_rng(4))
    assert np.array_equal(plan.actor_xy, a.actor_xy) and np.array_equal(plan.camera_xy, a.camera_xy)
    assert a_frames.shape == (CFG.num_frames, *CFG.size, 3) and a_frames.dtype == np.uint8
    assert 1 <= len(a.distractor_xy) <= 2
    c_frames, _ = render_trajectory("zigzag", CFG, np.random.default_rng(5))
    assert np.abs(c_frames[0].astype(int) - a_frames[0]).mean() > 20  # another ground and actor


def test_ground_moves_with_the_camera():
    """A later frame shows the first frame's ground shifted by minus the camera's motion: matched
    at that (rounded) shift, the ground differs far less than at no shift."""
    frames, truth = render_trajectory("straight", CFG, np.random.default_rng(8))
    h, w = CFG.size
    yy, xx = np.mgrid[:h, :w]
    k, m = 12, 32  # the later frame; a margin wider than the camera's shift
    dx, dy = np.round(truth.camera_xy[k] - truth.camera_xy[0]).astype(int)
    assert max(abs(dx), abs(dy)) >= 3  # this seed pans enough to tell
    sprites = [truth.actor_xy[k], *truth.distractor_xy[:, k]]
    free = np.ones((h, w), bool)  # no sprite near, in the later frame or the first
    for x, y in sprites + [truth.actor_xy[0], *truth.distractor_xy[:, 0]]:
        free &= (np.abs(xx - x) > 26) | (np.abs(yy - y) > 26)
    for x, y in [truth.actor_xy[0], *truth.distractor_xy[:, 0]]:  # where they were, seen shifted
        free &= (np.abs(xx - x + dx) > 26) | (np.abs(yy - y + dy) > 26)
    later = frames[k, m:h - m, m:w - m].astype(float)
    shifted = frames[0, m + dy:h - m + dy, m + dx:w - m + dx].astype(float)
    still = frames[0, m:h - m, m:w - m].astype(float)
    region = free[m:h - m, m:w - m]
    assert region.sum() > 500
    matched, unmatched = np.abs(later - shifted)[region].mean(), np.abs(later - still)[region].mean()
    assert matched < 0.5 * unmatched, (matched, unmatched)


def test_shipped_photo():
    img = photo()
    assert img.shape == (512, 512) and img.dtype == np.uint8 and img.std() > 20
