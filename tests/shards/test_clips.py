"""``mvmae.shards.clips``: clip frames, looping/padding, nearest I-frames, crops, flips and units.

Synthetic sources with known fields; the real-shard versions of these checks are in
``test_reader.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from mvmae.shards.clips import (ArraySource, ClipConfig, area_weights, clip_frame_index, clip_starts,
                                eval_crop_box, make_clips, nearest_iframes, random_crop_box, resample_mv,
                                snap_box)
from mvmae.shards.sample import SampleError

H, W, GRID = 144, 192, 8
CELLS = (H // GRID, W // GRID)  # (18, 24)


def uniform_source(n: int = 40, dx: float = 2.0, dy: float = -1.0, iframe_index=(0, 12, 24, 36),
                   size=(H, W), grid=GRID) -> ArraySource:
    """A pan: every cell of every frame but the I-frames holds (dx, dy) px/frame; the I-frame
    images are a horizontal ramp (so a flip is visible) with their index in the green channel."""
    h, w = -(-size[0] // grid), -(-size[1] // grid)
    valid = np.ones((n, h, w), bool)  # (N, h, w)
    index = np.asarray(iframe_index, np.int64)
    valid[index[(index >= 0) & (index < n)]] = False
    mv = np.zeros((n, 2, h, w), np.float32)  # (N, 2, h, w) px/frame
    mv[:, 0], mv[:, 1] = dx, dy
    mv *= valid[:, None]
    ramp = np.broadcast_to(np.linspace(0, 255, size[1]).astype(np.uint8), size)  # (H, W)
    images = np.zeros((len(index), *size, 3), np.uint8)
    images[..., 0] = ramp
    images[..., 1] = (np.arange(len(index)) * 10)[:, None, None]
    return ArraySource("pan", 1, mv, valid, images, index, size, grid)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        ClipConfig(num_frames=0)
    with pytest.raises(ValueError, match="mode"):
        ClipConfig(mode="random")
    with pytest.raises(ValueError, match="num_clips"):
        ClipConfig(mode="center", num_clips=3)
    with pytest.raises(ValueError, match="short_video"):
        ClipConfig(short_video="repeat")
    with pytest.raises(ValueError, match="crop_area"):
        ClipConfig(crop_area=(0.5, 1.5))
    assert ClipConfig(num_frames=8, stride=3).span == 22


@pytest.mark.parametrize("num_frames,stride", [(16, 1), (8, 2), (4, 5)])
def test_frames_and_stride(num_frames: int, stride: int) -> None:
    config = ClipConfig(num_frames=num_frames, stride=stride, mode="center")
    (clip,) = make_clips(uniform_source(), config)
    span = (num_frames - 1) * stride + 1
    assert clip.start == (40 - span) // 2
    np.testing.assert_array_equal(clip.frame_index, clip.start + stride * np.arange(num_frames))
    assert clip.mv.shape == (num_frames, 2, 14, 14) and clip.valid.shape == (num_frames, 14, 14)


def test_train_start_is_uniform_over_every_start_that_fits() -> None:
    config = ClipConfig(num_frames=16)
    starts = [clip_starts(40, config, np.random.default_rng(i))[0] for i in range(400)]
    assert min(starts) == 0 and max(starts) == 40 - 16
    counts = np.bincount(starts, minlength=25)
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()


def test_multi_clips_evenly_spaced() -> None:
    config = ClipConfig(mode="multi", num_clips=4, num_frames=10)
    clips = make_clips(uniform_source(n=40), config)
    assert [c.start for c in clips] == [0, 10, 20, 30]
    assert [c.clip_index for c in clips] == [0, 1, 2, 3]


def test_short_video_loops() -> None:
    config = ClipConfig(num_frames=16, mode="center", short_video="loop")
    (clip,) = make_clips(uniform_source(n=10, iframe_index=(0,)), config)
    np.testing.assert_array_equal(clip.frame_index, np.arange(16) % 10)
    assert clip.start == 0
    assert not clip.valid[0].any() and not clip.valid[10].any()  # frame 0 (an I-frame), looped
    assert clip.valid[1:10].all() and clip.valid[11:].all()


def test_short_video_padded_with_invalid_frames() -> None:
    config = ClipConfig(num_frames=16, mode="center", short_video="pad")
    (clip,) = make_clips(uniform_source(n=10, iframe_index=(0,)), config)
    np.testing.assert_array_equal(clip.frame_index, np.where(np.arange(16) < 10, np.arange(16), -1))
    assert clip.valid[1:10].all() and not clip.valid[10:].any()
    assert (clip.mv[10:] == 0).all()


def test_pad_and_loop_agree_when_the_video_is_long_enough() -> None:
    loop = clip_frame_index(3, 40, ClipConfig(num_frames=16, short_video="loop"))
    pad = clip_frame_index(3, 40, ClipConfig(num_frames=16, short_video="pad"))
    np.testing.assert_array_equal(loop, pad)


@pytest.mark.parametrize("centre,k,expected", [
    (19.5, 1, [24]), (19.5, 2, [12, 24]), (18.0, 1, [12]),  # 18: a tie between 12 and 24 -> earlier
    (18.0, 3, [0, 12, 24]), (-3.0, 2, [-5, 0]), (100.0, 2, [24, 36]),
])
def test_nearest_iframes(centre: float, k: int, expected: list[int]) -> None:
    index = np.array([-5, 0, 12, 24, 36])  # -5: a segment's carried I-frame, before its start
    np.testing.assert_array_equal(index[nearest_iframes(index, centre, k)], expected)


def test_fewer_iframes_than_asked_repeats_the_nearest() -> None:
    config = ClipConfig(mode="center", num_iframes=3)
    (clip,) = make_clips(uniform_source(iframe_index=(0, 36)), config)
    np.testing.assert_array_equal(clip.iframe_index, [0, 36, 36])  # centre 19.5: 36 (16.5) is nearer than 0
    assert clip.iframes.shape == (3, 3, 224, 224)


def test_no_iframe_is_a_sample_error() -> None:
    src = uniform_source(iframe_index=())
    with pytest.raises(SampleError, match="no I-frame"):
        make_clips(src, ClipConfig(mode="center"))


@pytest.mark.parametrize("mode", ["train", "center"])
def test_motion_only_clips_of_a_sample_without_iframes(mode: str) -> None:
    """num_iframes=0 reads a sample with no I-frame (images (0, 0, 0, 3), as decode_sample gives
    them; its record says iframe_size [0, 0]): the field is cut by the box snapped to whole source
    pixels, in output px per frame; with num_iframes=1 the sample is refused."""
    src = uniform_source(iframe_index=())
    src.images = np.zeros((0, 0, 0, 3), np.uint8)
    rng = np.random.default_rng(3) if mode == "train" else None
    (clip,) = make_clips(src, ClipConfig(mode=mode, num_iframes=0), rng)
    assert clip.iframes.shape == (0, 3, 224, 224) and clip.iframe_index.shape == (0,)
    px = np.array(clip.crop_box) * [H, W, H, W]
    np.testing.assert_allclose(px, np.round(px), atol=1e-9)
    y0, x0, y1, x1 = clip.crop_box
    assert clip.valid.all()
    np.testing.assert_allclose(clip.mv[:, 0], (-2.0 if clip.flipped else 2.0) * 224 / ((x1 - x0) * W), rtol=1e-5)
    np.testing.assert_allclose(clip.mv[:, 1], -1.0 * 224 / ((y1 - y0) * H), rtol=1e-5)
    with pytest.raises(SampleError, match="no I-frame"):
        make_clips(src, ClipConfig(mode=mode, num_iframes=1), rng)


def test_area_weights_rows_sum_to_one_and_cover_partial_cells() -> None:
    edges = np.minimum(np.arange(4) * 8, 20) / 20  # 3 cells over 20 px: 8, 8 and a partial 4
    wts = area_weights(edges, 0.0, 1.0, 2)  # 2 output cells of 10 px
    np.testing.assert_allclose(wts.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(wts, [[0.8, 0.2, 0.0], [0.0, 0.6, 0.4]], atol=1e-6)


@pytest.mark.parametrize("box", [(0.0, 0.0, 1.0, 1.0), (0.1, 0.2, 0.7, 0.6), (0.0, 0.125, 1.0, 0.875)])
def test_vectors_scaled_to_output_px_per_frame(box) -> None:
    """A uniform pan of (2, -1) source px/frame becomes (2 * 224 / box width px, -1 * 224 / box
    height px) per frame, whatever the box."""
    src = uniform_source()
    config = ClipConfig(mode="center")
    frames = np.arange(1, 11)
    mv, valid = resample_mv(*src.motion(frames), src.size, src.grid, box, config)
    bh, bw = (box[2] - box[0]) * H, (box[3] - box[1]) * W
    assert valid.all()
    np.testing.assert_allclose(mv[:, 0], 2.0 * 224 / bw, rtol=1e-5)
    np.testing.assert_allclose(mv[:, 1], -1.0 * 224 / bh, rtol=1e-5)


def test_resampling_partial_cells_and_validity() -> None:
    """Odd frame size: the partial last cells count by their real area; an output cell is valid
    when at least half of it holds vectors."""
    size = (36, 52)  # 5 x 7 cells of 8 px, the last row/column partial (4 px)
    src = uniform_source(n=3, size=size, iframe_index=(0,))
    src.valid[1, :, :3] = False  # left 24 px of 52 have no vector in frame 1
    src.mv[1, :, :, :3] = 0.0
    config = ClipConfig(mode="center", mv_size=2, eval_crop="full", iframe_size=52)
    mv, valid = resample_mv(*src.motion(np.array([1, 2])), size, 8, (0.0, 0.0, 1.0, 1.0), config)
    # output columns: [0, 26) px -> 24/26 invalid -> invalid; [26, 52) -> all valid
    np.testing.assert_array_equal(valid[0], [[False, True], [False, True]])
    assert valid[1].all()
    np.testing.assert_allclose(mv[0, 0][valid[0]], 2.0, rtol=1e-5)  # iframe_size 52 = W: scale 1
    np.testing.assert_allclose(mv[0, 1][valid[0]], -1.0 * 52 / 36, rtol=1e-5)


def test_flip_negates_dx_and_mirrors_everything() -> None:
    config = ClipConfig(flip_prob=0.0)
    src = uniform_source()
    src.valid[5, :, :4] = False  # an asymmetric hole, to see the mirror
    src.mv[5, :, :, :4] = 0.0
    (plain,) = make_clips(src, config, np.random.default_rng(7))
    (flipped,) = make_clips(src, ClipConfig(flip_prob=1.0), np.random.default_rng(7))
    assert not plain.flipped and flipped.flipped
    assert plain.start == flipped.start and plain.crop_box == flipped.crop_box
    np.testing.assert_array_equal(flipped.valid, plain.valid[..., ::-1])
    np.testing.assert_allclose(flipped.mv[:, 0], -plain.mv[:, 0, :, ::-1])
    np.testing.assert_allclose(flipped.mv[:, 1], plain.mv[:, 1, :, ::-1])
    np.testing.assert_array_equal(flipped.iframes, plain.iframes[..., ::-1])
    assert plain.valid.any() and (plain.mv[:, 0][plain.valid] > 0).all()
    assert (flipped.mv[:, 0][flipped.valid] < 0).all()
    red = plain.iframes[0, 0].astype(int)  # the ramp rises left to right (and falls once mirrored)
    assert red[:, -1].mean() > red[:, 0].mean()


@pytest.mark.parametrize("turns, expected", [(1, (-1.0, -2.0)), (2, (-2.0, 1.0)), (3, (1.0, 2.0))])
def test_rotation_turns_positions_and_vectors_together(turns, expected) -> None:
    """A pan of (+2, -1) px/frame (right and up) turned counterclockwise on screen: a quarter turn
    makes it (-1, -2) (up and left); the picture and the valid mask turn with np.rot90."""
    src = uniform_source()
    src.valid[5, :, :4] = False  # an asymmetric hole, to see the turn
    src.mv[5, :, :, :4] = 0.0
    config = ClipConfig(flip_prob=0.0, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0))
    turned = None
    for seed in range(40):  # the draw that gives this many turns, with the same start and crop
        (clip,) = make_clips(src, ClipConfig(**{**config.__dict__, "rotate": True}), np.random.default_rng(seed))
        if clip.quarter_turns == turns:
            turned = clip
            break
    assert turned is not None
    (plain,) = make_clips(src, config, np.random.default_rng(seed))
    assert plain.start == turned.start and plain.crop_box == turned.crop_box
    np.testing.assert_array_equal(turned.valid, np.rot90(plain.valid, turns, axes=(-2, -1)))
    np.testing.assert_array_equal(turned.iframes, np.rot90(plain.iframes, turns, axes=(-2, -1)))
    scale = float(plain.mv[:, 0][plain.valid][0]) / 2.0  # vectors are in output I-frame px
    dx, dy = turned.mv[:, 0][turned.valid], turned.mv[:, 1][turned.valid]
    assert np.allclose(dx, expected[0] * scale) and np.allclose(dy, expected[1] * scale)


def test_random_crop_box_within_bounds_and_area() -> None:
    config = ClipConfig(crop_area=(0.3, 0.6), crop_aspect=(0.75, 1.333))
    rng = np.random.default_rng(0)
    for _ in range(200):
        y0, x0, y1, x1 = random_crop_box((H, W), config, rng)
        assert 0 <= y0 < y1 <= 1 + 1e-9 and 0 <= x0 < x1 <= 1 + 1e-9
        area = (y1 - y0) * (x1 - x0)
        aspect = (x1 - x0) * W / ((y1 - y0) * H)
        assert 0.3 - 1e-6 <= area <= 0.6 + 1e-6 and 0.75 - 1e-6 <= aspect <= 1.333 + 1e-6


def test_eval_crop_boxes() -> None:
    config = ClipConfig(mode="center")
    np.testing.assert_allclose(eval_crop_box((H, W), config), (0.0, 0.125, 1.0, 0.875))  # 144 px square
    assert eval_crop_box((H, W), ClipConfig(mode="center", eval_crop="full")) == (0.0, 0.0, 1.0, 1.0)


def test_eval_clips_are_not_augmented() -> None:
    (a,) = make_clips(uniform_source(), ClipConfig(mode="center"))
    (b,) = make_clips(uniform_source(), ClipConfig(mode="center"))
    assert not a.flipped and a.crop_box == b.crop_box
    np.testing.assert_array_equal(a.mv, b.mv)
    with pytest.raises(ValueError, match="random generator"):
        make_clips(uniform_source(), ClipConfig(mode="train"))


@pytest.mark.parametrize("box,pixels", [
    ((0.1, 0.2, 0.8, 0.9), (26, 91, 205, 410)),  # every edge to the nearest I-frame pixel
    ((0.5, 0.5, 0.5001, 0.5001), (128, 228, 129, 229)),  # at least one pixel
    ((0.9999, 0.0, 1.0, 1.0), (255, 0, 256, 455)),  # inside the image
])
def test_snap_box_to_iframe_pixels(box, pixels) -> None:
    snapped, px = snap_box(box, (256, 455))
    assert px == pixels
    np.testing.assert_allclose(snapped, (px[0] / 256, px[1] / 455, px[2] / 256, px[3] / 455))
    assert max(abs(a - b) for a, b in zip(snapped, box)) <= 0.5 / 256 + 1e-9 or box[2] - box[0] < 1 / 256


def test_clip_crop_box_is_the_snapped_box() -> None:
    """The clip reports the box both the field and the I-frames were cut by (whole I-frame px)."""
    src = uniform_source()
    for seed in range(5):
        (clip,) = make_clips(src, ClipConfig(), np.random.default_rng(seed))
        px = np.array(clip.crop_box) * [H, W, H, W]
        np.testing.assert_allclose(px, np.round(px), atol=1e-9)
