"""Masking strategies: the shared contract, then each strategy's defining property."""

from __future__ import annotations

import math

import pytest
import torch

from mvmae.train.masking import (
    MASKINGS,
    MaskResult,
    MotionFocusedMasking,
    MotionGuidedMasking,
    TubeMasking,
    VideoMSMasking,
    build_masking,
    motion_area,
)

B, T, H, W = 3, 8, 14, 14
S = H * W
NAMES = sorted(MASKINGS)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _moving_object(size: int = 3, speed_px: float = 8.0, x0: int = 1, y0: int = 5) -> torch.Tensor:
    """Static ground and a size x size object moving right by ``speed_px`` px/frame, placed where it is
    at each temporal index when 8 px/frame is one token per index (t=2 frames, 16 px per token)."""
    motion = torch.zeros(B, T, H, W, 2)
    for ti in range(T):
        x = x0 + ti
        motion[:, ti, y0 : y0 + size, x : x + size, 0] = speed_px
    return motion


FIELDS = {
    "static": lambda: torch.zeros(B, T, H, W, 2),
    "moving": _moving_object,
    "noise": lambda: torch.randn(B, T, H, W, 2, generator=_gen(5)),
}


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("ratio", [0.9, 0.5])
@pytest.mark.parametrize("name", NAMES)
def test_exact_counts_and_ratio(name, ratio, field):
    strategy = build_masking(name, mask_ratio=ratio)
    result = strategy(FIELDS[field](), _gen(0))
    assert isinstance(result, MaskResult)
    assert result.masked.shape == result.dropped.shape == (B, T * S)
    assert result.masked.dtype == result.dropped.dtype == torch.bool
    num_masked, num_dropped = strategy.counts((T, H, W))
    assert (result.masked.sum(dim=1) == num_masked).all()
    assert (result.dropped.sum(dim=1) == num_dropped).all()
    assert result.num_masked == num_masked and result.num_dropped == num_dropped
    kept = T * S - num_dropped
    # Per-slice strategies round per temporal index: at most half a token per slice off.
    assert abs(num_masked - ratio * kept) <= T / 2 + 1e-9
    assert abs(num_masked / kept - ratio) <= 0.5 / S + 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_disjoint_and_visible(name):
    result = build_masking(name)(_moving_object(), _gen(0))
    assert not (result.masked & result.dropped).any()
    assert torch.equal(result.visible, ~result.masked & ~result.dropped)
    assert (result.visible.sum(dim=1) > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_indices_for_gathers(name):
    result = build_masking(name)(_moving_object(), _gen(0))
    visible, masked = result.indices()
    num_masked, num_dropped = build_masking(name).counts((T, H, W))
    assert masked.shape == (B, num_masked) and visible.shape == (B, T * S - num_masked - num_dropped)
    assert (masked.diff(dim=1) > 0).all() and (visible.diff(dim=1) > 0).all()
    assert result.masked.gather(1, masked).all() and result.visible.gather(1, visible).all()


@pytest.mark.parametrize("field", ["static", "moving"])
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed_and_varies_with_it(name, field):
    strategy = build_masking(name)
    motion = FIELDS[field]()
    first, again, other = strategy(motion, _gen(7)), strategy(motion, _gen(7)), strategy(motion, _gen(8))
    assert torch.equal(first.masked, again.masked) and torch.equal(first.dropped, again.dropped)
    assert not torch.equal(first.masked, other.masked)


@pytest.mark.parametrize("name", NAMES)
def test_samples_of_a_batch_differ(name):
    masked = build_masking(name)(torch.zeros(B, T, H, W, 2), _gen(0)).masked
    assert not torch.equal(masked[0], masked[1])


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_and_options(name):
    with pytest.raises(ValueError):
        build_masking(name)(torch.zeros(B, T, H, W), _gen(0))
    with pytest.raises(ValueError):
        build_masking(name, mask_ratio=1.5)
    with pytest.raises(ValueError):
        build_masking(name, no_such_option=1)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown masking"):
        build_masking("block")


def test_tube_repeats_one_spatial_mask():
    masked = TubeMasking()(torch.zeros(B, T, H, W, 2), _gen(0)).masked.reshape(B, T, S)
    assert (masked == masked[:, :1]).all()
    assert (masked[:, 0].sum(dim=1) == round(0.9 * S)).all()


def _shift_overlap(masked: torch.Tensor, region: torch.Tensor | None = None) -> float:
    """Of the tokens masked at index k (and in ``region`` at k), the share whose right neighbour is
    masked at k + 1; tokens in the last column are left out."""
    grid = masked.reshape(B, T, H, W)
    source = grid[:, :-1, :, :-1]
    if region is not None:
        source = source & region[:, :-1, :, :-1]
    follows = source & grid[:, 1:, :, 1:]
    return float(follows.sum()) / max(float(source.sum()), 1.0)


def test_mgm_mask_follows_a_moving_object():
    motion = _moving_object(size=3, speed_px=8.0)  # 1 token per temporal index
    object_tokens = motion.norm(dim=-1) > 0  # (B, T, H, W)
    strategy = MotionGuidedMasking(mask_ratio=9 / S, frames_per_token=2, px_per_token=16.0, eps=0.01,
                                   visible_moving_ratio=0.0)
    masked = strategy(motion, _gen(0)).masked
    assert _shift_overlap(masked) > 0.8
    tube = TubeMasking(mask_ratio=9 / S)(motion, _gen(0)).masked
    assert _shift_overlap(tube) < 0.5
    # At the default ratio the object stays masked as it moves.
    masked = MotionGuidedMasking(eps=0.01, visible_moving_ratio=0.0)(motion, _gen(1)).masked.reshape(B, T, H, W)
    assert float(masked[object_tokens].float().mean()) > 0.95


def test_mgm_mask_follows_a_whole_field_pan():
    motion = torch.zeros(B, T, H, W, 2)
    motion[..., 0] = 4.0  # 4 px/frame * 2 frames / 8 px per token = 1 token per index
    strategy = MotionGuidedMasking(mask_ratio=0.5, frames_per_token=2, px_per_token=8.0)
    assert _shift_overlap(strategy(motion, _gen(3)).masked) == pytest.approx(1.0)


def test_mgm_seeds_on_moving_tokens():
    motion = _moving_object(size=3, speed_px=8.0)
    masked = MotionGuidedMasking(mask_ratio=0.2, eps=0.01, visible_moving_ratio=0.0)(motion, _gen(2)).masked.reshape(B, T, H, W)
    assert masked[:, 0, 5:8, 1:4].all()


def _two_movers(rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """Two 1-token movers at opposite corners of the box rows[0]..rows[1] x cols[0]..cols[1]."""
    motion = torch.zeros(B, T, H, W, 2)
    motion[:, :, rows[0], cols[0], 0] = 6.0
    motion[:, :, rows[1], cols[1], 1] = -6.0
    return motion


def _box(rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    box = torch.zeros(H, W, dtype=torch.bool)
    box[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return box


def test_motion_area_is_the_bounding_box():
    rows, cols = (1, 12), (1, 11)
    area = motion_area(_two_movers(rows, cols))
    assert (area == _box(rows, cols)).all()
    assert not motion_area(torch.zeros(B, T, H, W, 2)).any()
    assert not motion_area(0.1 * torch.randn(B, T, H, W, 2, generator=_gen(0))).any()


@pytest.mark.parametrize("ratio", [0.9, 0.5])
def test_mofo_share_of_masked_tubes_inside_the_box(ratio):
    rows, cols = (1, 12), (1, 11)  # 132 tubes inside, 64 outside
    strategy = MotionFocusedMasking(mask_ratio=ratio, inside_ratio=0.75, mode="share", visible_moving_ratio=0.0)
    masked = strategy(_two_movers(rows, cols), _gen(0)).masked.reshape(B, T, S)
    assert (masked == masked[:, :1]).all()
    spatial = masked[:, 0]
    num_tubes = spatial.sum(dim=1)
    inside = (spatial & _box(rows, cols).reshape(1, S)).sum(dim=1)
    assert ((inside - 0.75 * num_tubes).abs() <= 1).all()


def test_mofo_inside_masks_share_of_the_box():
    rows, cols = (2, 9), (2, 9)  # 64 tubes inside, 132 outside
    strategy = MotionFocusedMasking(inside_ratio=0.75, mode="inside", visible_moving_ratio=0.0)
    masked = strategy(_two_movers(rows, cols), _gen(0)).masked.reshape(B, T, S)
    box = _box(rows, cols).reshape(1, S)
    inside = (masked[:, 0] & box).sum(dim=1)
    assert ((inside - 0.75 * 64).abs() <= 1).all()
    assert (masked[:, 0].sum(dim=1) == round(0.9 * S)).all()


def test_mofo_clamps_when_the_box_cannot_honour_the_share():
    small = MotionFocusedMasking(mode="share", visible_moving_ratio=0.0)(_two_movers((5, 6), (5, 6)), _gen(0)).masked
    assert small.reshape(B, T, H, W)[:, :, 5:7, 5:7].all()  # 4-tube box masked whole
    # A box of 192 tubes leaves 4 outside: all of them masked, the other 172 tubes inside.
    large = MotionFocusedMasking(mode="share", visible_moving_ratio=0.0)(_two_movers((0, 13), (0, 13)), _gen(0)).masked
    assert (large.reshape(B, T, S).sum(dim=2) == round(0.9 * S)).all()
    split = MotionFocusedMasking(mode="share").split(torch.tensor([4, 192, 132]), S)
    assert split[0].tolist() == [4, 172, 132] and split[1].tolist() == [172, 4, 44]
    split = MotionFocusedMasking(mode="inside").split(torch.tensor([0, 64, 196]), S)
    assert split[0].tolist() == [0, 48, 176] and split[1].tolist() == [176, 128, 0]


def _slice_speeds(speeds: list[float]) -> torch.Tensor:
    motion = torch.zeros(B, T, H, W, 2)
    for ti, speed in enumerate(speeds):
        motion[:, ti, 4:10, 4:10, 0] = speed
    return motion


def test_videoms_drops_the_lowest_motion_slices():
    motion = _slice_speeds([5.0, 0.5, 3.0, 0.0, 4.0, 2.0, 1.0, 6.0])
    result = VideoMSMasking(drop_ratio=0.25)(motion, _gen(0))
    dropped = result.dropped.reshape(B, T, S)
    assert dropped[:, [1, 3]].all()
    assert not dropped[:, [0, 2, 4, 5, 6, 7]].any()
    assert not result.masked.reshape(B, T, S)[:, [1, 3]].any()


@pytest.mark.parametrize("ratio", [0.9, 0.5, 0.1])
def test_videoms_masks_high_motion_first(ratio):
    motion = _moving_object(size=4) + 0.2 * torch.randn(B, T, H, W, 2, generator=_gen(4))
    result = VideoMSMasking(mask_ratio=ratio, visible_moving_ratio=0.0)(motion, _gen(0))
    magnitude = motion.norm(dim=-1).reshape(B, T * S)
    kept = ~result.dropped
    masked_mean = magnitude[result.masked].mean()
    unmasked_mean = magnitude[kept & ~result.masked].mean()
    assert masked_mean > 1.5 * unmasked_mean


def test_videoms_alpha_zero_is_uniform():
    motion = _moving_object(size=4)
    strategy = VideoMSMasking(mask_ratio=0.1, alpha=0.0)
    hits = torch.stack([strategy(motion, _gen(s)).masked for s in range(20)]).float()
    object_tokens = (motion.norm(dim=-1) > 0).reshape(B, T * S)
    rate = float(hits[:, object_tokens].mean())
    assert rate < 0.3  # about the masked share of kept tokens, not the ~1 of alpha=1


def test_videoms_counts_and_validation():
    assert VideoMSMasking().counts((8, 14, 14)) == (round(0.9 * 6 * 196), 2 * 196)
    with pytest.raises(ValueError):
        VideoMSMasking(drop_ratio=1.0)
    with pytest.raises(ValueError):
        VideoMSMasking(drop_ratio=0.9).counts((1, 4, 4))
    assert math.isclose(VideoMSMasking(drop_ratio=0.0).counts((2, 2, 2))[0], 7)


# --- keeping motion visible ---------------------------------------------------------------------

MOTION_BIASED = ("mgm", "mofo", "videoms")


@pytest.mark.parametrize("name", MOTION_BIASED)
def test_motion_biased_maskings_keep_a_share_of_the_motion_visible(name):
    """At mask ratio 0.9 on one small mover, plain MGM and VideoMS hide (nearly) all of its
    tokens; by default a quarter of the moving tokens stays visible, with the counts unchanged."""
    motion = _moving_object(size=3, speed_px=8.0)
    moving = (motion.norm(dim=-1) >= 0.5).reshape(B, T * S)
    plain = build_masking(name, visible_moving_ratio=0.0)(motion, _gen(0))
    default = build_masking(name)(motion, _gen(0))
    assert build_masking(name).visible_moving_ratio == 0.25
    need = math.ceil(0.25 * int(moving[0].sum()))
    assert ((default.visible & moving).sum(dim=1) >= need).all()
    if name != "mofo":  # MOFO's 'inside' mode leaves a quarter of its motion box visible itself
        assert ((plain.visible & moving).sum(dim=1) < need).all()  # what the option is for
    assert (default.masked.sum(dim=1) == plain.masked.sum(dim=1)).all()
    assert torch.equal(default.dropped, plain.dropped)


@pytest.mark.parametrize("name", NAMES)
def test_without_motion_the_visible_share_changes_nothing(name):
    static = torch.zeros(B, T, H, W, 2)
    a = build_masking(name, visible_moving_ratio=0.0)(static, _gen(3))
    b = build_masking(name, visible_moving_ratio=0.5)(static, _gen(3))
    assert torch.equal(a.masked, b.masked) and torch.equal(a.dropped, b.dropped)


def test_mgm_mask_still_travels_with_the_motion_when_motion_stays_visible():
    """The visible quarter is drawn anew at each temporal index, so the mask's continuity along
    the motion drops (0.66 here, where the mask is exactly the mover), yet stays well above
    tube masking's, which ignores the motion."""
    motion = _moving_object(size=3, speed_px=8.0)
    masked = MotionGuidedMasking(mask_ratio=9 / S, frames_per_token=2, px_per_token=16.0, eps=0.01)(
        motion, _gen(0)).masked
    tube = TubeMasking(mask_ratio=9 / S)(motion, _gen(0)).masked
    assert _shift_overlap(masked) > 0.6 > 0.5 > _shift_overlap(tube)
