"""Display rotation: phone-style videos (coded turned, a display matrix saying how to turn them
back) come out upright, I-frames and fields alike: content moving right on screen has dx > 0."""

from __future__ import annotations

import numpy as np
import pytest

from mvmae.extract.container import quarter_turns
from mvmae.extract.mvfield import Blocks, rasterize, rotate_blocks
from mvmae.extract.probe import probe_video
from mvmae.extract.video import extract_video

try:
    import media
except ImportError:  # pragma: no cover
    from tests import media

VX, VY, NUM_FRAMES, SIZE = 2.0, -1.0, 24, (144, 192)  # on screen: right and up; upright (H, W)


@pytest.fixture(scope="module")
def upright(tmp_path_factory):
    """The upright twin: the same pan coded as displayed (no display matrix)."""
    path = media.make_pan_clip(tmp_path_factory.mktemp("rot") / "upright.mp4", vx=VX, vy=VY,
                               num_frames=NUM_FRAMES, size=SIZE, bframes=2, refs=3, gop=12)
    return extract_video(path)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotated_clip_matches_its_upright_twin(rotation, upright, tmp_path) -> None:
    """For each display rotation: upright size, the pan's direction on screen (dx = +2, dy = -1),
    the field and I-frames of the upright twin (within coding noise), the rotation recorded in
    the metadata and shown by probe."""
    path = media.make_rotated_clip(tmp_path / f"phone_{rotation}.mp4", rotation, vx=VX, vy=VY,
                                   num_frames=NUM_FRAMES, size=SIZE)
    fields = extract_video(path)
    coded = SIZE[::-1] if rotation % 180 else SIZE
    assert fields.size == SIZE and fields.valid.shape[1:] == upright.valid.shape[1:]
    assert (fields.meta["rotation"], fields.meta["coded_size"]) == (rotation, list(coded))
    moving = fields.valid[1:]
    assert float(np.median(fields.mv[1:, 0][moving])) == pytest.approx(VX, abs=0.1)
    assert float(np.median(fields.mv[1:, 1][moving])) == pytest.approx(VY, abs=0.1)
    both = fields.valid & upright.valid  # (T, h, w)
    assert both.sum() >= 0.95 * upright.valid.sum()
    error = np.abs(fields.mv - upright.mv).transpose(0, 2, 3, 1)[both]  # (cells, 2) px/frame
    assert error.mean() < 0.15
    assert fields.iframe_index.tolist() == upright.iframe_index.tolist()
    assert np.abs(fields.iframes.astype(np.int16) - upright.iframes).mean() < 3.0
    report = probe_video(path)
    assert (report.rotation, (report.height, report.width)) == (rotation, coded)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_rotate_blocks_turns_the_field_as_the_picture(turns) -> None:
    """Blocks turned then rasterised == the field rasterised then turned as np.rot90 turns the
    picture, with the vector components turned alike (exact on a grid that divides the frame)."""
    rng = np.random.default_rng(turns)
    n, size, grid = 40, (48, 64), 8
    blocks = Blocks(*(rng.integers(0, 6, n).astype(np.int32) * 8 for _ in range(2)),
                    *(rng.choice([8, 16], n).astype(np.int32) for _ in range(2)),
                    np.zeros((2, n), np.float32), np.full(n, -1, np.int32))
    velocity = rng.normal(size=(2, n)).astype(np.float32)
    mv, valid = rasterize(blocks, velocity, size, grid)  # (2, h, w), (h, w)
    turned_blocks, turned_velocity, turned_size = rotate_blocks(blocks, velocity, size, turns)
    mv_t, valid_t = rasterize(turned_blocks, turned_velocity, turned_size, grid)
    expect = np.rot90(mv, turns, axes=(1, 2))
    dx, dy = expect
    expect = {1: np.stack([dy, -dx]), 2: np.stack([-dx, -dy]), 3: np.stack([-dy, dx])}[turns]
    np.testing.assert_array_equal(valid_t, np.rot90(valid, turns))
    np.testing.assert_allclose(mv_t, expect, atol=1e-5)


def test_quarter_turns() -> None:
    assert [quarter_turns(d) for d in (0, 90, -90, 180, -180, 270, 89.5)] == [0, 1, 3, 2, 2, 3, 1]
    assert quarter_turns(45) is None
