"""Camera compensation, normalisation, valid-only pooling and the MotionPrep chain."""

from __future__ import annotations

import pytest
import torch

from mvmae.train.motion import (
    MotionPrep,
    compensate_camera,
    normalize_motion,
    pool_to_grid,
    prepare,
)

B, T, H, W = 2, 4, 12, 16


def _pan(dx: float = 3.0, dy: float = -1.5) -> tuple[torch.Tensor, torch.Tensor]:
    mv = torch.empty(B, T, 2, H, W)
    mv[:, :, 0], mv[:, :, 1] = dx, dy
    return mv, torch.ones(B, T, H, W, dtype=torch.bool)


def _zoom(rate: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom about the grid centre: (dx, dy) = rate * (x - cx, y - cy), an affine field."""
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    mv = torch.empty(B, T, 2, H, W)
    mv[:, :, 0] = rate * (xs - (W - 1) / 2)
    mv[:, :, 1] = rate * (ys - (H - 1) / 2)
    return mv, torch.ones(B, T, H, W, dtype=torch.bool)


@pytest.mark.parametrize("method", ["median", "affine"])
def test_pure_pan_is_removed(method):
    mv, valid = _pan()
    out = compensate_camera(mv, valid, method)
    assert out.shape == mv.shape
    assert out.abs().max() < 1e-4


@pytest.mark.parametrize("method", ["median", "affine"])
def test_object_motion_relative_to_ground_survives(method):
    mv, valid = _pan(dx=3.0, dy=-1.5)
    mv[:, :, 0, 3:6, 4:8] = -2.0  # an object moving left while the camera pans right
    mv[:, :, 1, 3:6, 4:8] = 1.0
    out = compensate_camera(mv, valid, method)
    obj = out[:, :, :, 3:6, 4:8]
    assert torch.allclose(obj[:, :, 0], torch.full_like(obj[:, :, 0], -5.0), atol=1e-3)
    assert torch.allclose(obj[:, :, 1], torch.full_like(obj[:, :, 1], 2.5), atol=1e-3)
    ground = out.clone()
    ground[:, :, :, 3:6, 4:8] = 0
    assert ground.abs().max() < 1e-3


def test_zoom_removed_by_affine_not_by_median():
    mv, valid = _zoom()
    affine = compensate_camera(mv, valid, "affine")
    median = compensate_camera(mv, valid, "median")
    assert affine.abs().max() < 1e-3
    assert median.abs().max() > 1.0


def test_affine_with_object_on_zoom():
    mv, valid = _zoom()
    mv[:, :, 0, 2:4, 2:4] += 4.0
    out = compensate_camera(mv, valid, "affine")
    assert torch.allclose(out[:, :, 0, 2:4, 2:4], torch.full((B, T, 2, 2), 4.0), atol=1e-2)
    out[:, :, :, 2:4, 2:4] = 0
    assert out.abs().max() < 1e-2


@pytest.mark.parametrize("method", ["median", "affine", "none"])
def test_invalid_cells_zero_and_ignored(method):
    mv, valid = _pan(2.0, 1.0)
    mv[:, :, :, :, :3] = 100.0  # garbage under invalid cells must not move the estimate
    valid[:, :, :, :3] = False
    out = compensate_camera(mv, valid, method)
    assert (out[:, :, :, :, :3] == 0).all()
    if method != "none":
        assert out.abs().max() < 1e-4


def test_affine_degenerate_frames_fall_back():
    mv, valid = _pan(2.0, 1.0)
    valid[0, 0] = False
    valid[0, 0, 5, 7:9] = True  # 2 cells: median fallback
    valid[0, 1] = False
    valid[0, 1, 4, :] = True  # one row: collinear cells, median fallback
    valid[1, 0] = False  # no valid cell at all
    out = compensate_camera(mv, valid, "affine")
    assert torch.isfinite(out).all()
    assert out.abs().max() < 1e-4


def test_median_is_the_lower_middle_valid_value_as_nanmedian():
    """The sort-based median (exportable to ONNX) picks the same element as ``torch.nanmedian``
    over the valid cells: bit-identical compensation, odd and even counts, no valid cell (0)."""
    generator = torch.Generator().manual_seed(0)
    mv = torch.round(torch.randn(3, 8, 2, H, W, generator=generator) * 16) / 4  # quarter-pel: many ties
    valid = torch.rand(3, 8, H, W, generator=generator) < torch.linspace(0.0, 1.0, 8)[None, :, None, None]
    valid[0, 1] = False
    valid[0, 2] = False
    valid[0, 2, 3, 4:6] = True  # an even count of 2
    out = compensate_camera(mv, valid, "median")
    values = mv.masked_fill(~valid[:, :, None], float("nan")).flatten(3)  # (B, T, 2, M)
    expected = torch.nan_to_num(values.nanmedian(dim=-1).values, nan=0.0)[..., None, None]  # (B, T, 2, 1, 1)
    assert torch.equal(out, (mv - expected) * valid[:, :, None])
    assert (out[0, 1] == 0).all()


def test_none_only_zeroes_invalid():
    mv, valid = _pan(2.0, 1.0)
    valid[:, :, 0] = False
    out = compensate_camera(mv, valid, "none")
    assert (out[:, :, :, 0] == 0).all()
    assert torch.equal(out[:, :, :, 1:], mv[:, :, :, 1:])


def test_bad_inputs():
    mv, valid = _pan()
    with pytest.raises(ValueError):
        compensate_camera(mv, valid, "mean")
    with pytest.raises(ValueError):
        compensate_camera(mv[:, :, :1], valid)
    with pytest.raises(TypeError):
        compensate_camera(mv, valid.float())


def test_normalize_scale_and_clip():
    mv = torch.tensor([-40.0, -4.0, 0.0, 2.0, 8.0, 100.0])
    assert torch.allclose(normalize_motion(mv, scale_px=4.0), mv / 4.0)
    clipped = normalize_motion(mv, scale_px=4.0, clip=3.0)
    assert torch.allclose(clipped, torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 3.0]))
    with pytest.raises(ValueError):
        normalize_motion(mv, scale_px=0)


def test_pool_counts_only_valid_cells():
    mv = torch.zeros(1, 1, 2, 4, 4)
    valid = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mv[0, 0, 0, 0, 0], valid[0, 0, 0, 0] = 3.0, True  # top-left block: one valid cell of 4
    mv[0, 0, 0, 0, 1] = 50.0  # invalid, ignored
    mv[0, 0, 0, 2:, 2:], valid[0, 0, 2:, 2:] = 1.0, True  # bottom-right: all valid
    mv[0, 0, 0, 3, 3] = 5.0
    pooled, pooled_valid = pool_to_grid(mv, valid, (2, 2))
    assert pooled.shape == (1, 1, 2, 2, 2) and pooled_valid.shape == (1, 1, 2, 2)
    assert pooled[0, 0, 0, 0, 0] == pytest.approx(3.0)
    assert pooled[0, 0, 0, 1, 1] == pytest.approx(2.0)
    assert pooled_valid[0, 0].tolist() == [[True, False], [False, True]]
    assert (pooled[0, 0, :, 0, 1] == 0).all() and (pooled[0, 0, :, 1, 0] == 0).all()


def test_pool_non_divisible():
    mv, valid = _pan(2.0, -1.0)
    valid[:, :, :, 5] = False
    mv[:, :, :, :, 5] = 99.0
    pooled, pooled_valid = pool_to_grid(mv, valid, (5, 7))
    assert pooled.shape == (B, T, 2, 5, 7)
    assert pooled_valid.all()
    assert torch.allclose(pooled[:, :, 0], torch.full((B, T, 5, 7), 2.0))
    assert torch.allclose(pooled[:, :, 1], torch.full((B, T, 5, 7), -1.0))


def test_prep_config_validation():
    with pytest.raises(ValueError):
        MotionPrep(camera="ransac")
    with pytest.raises(ValueError):
        MotionPrep(grid=(0, 4))
    with pytest.raises(ValueError):
        MotionPrep(scale_px=-1)
    with pytest.raises(ValueError):
        MotionPrep(clip=0)
    assert MotionPrep(grid=[6, 8]).grid == (6, 8)


def test_prepare_chains_steps():
    mv, valid = _pan(3.0, 0.0)
    mv[:, :, 0, :6, :8] += 8.0  # top-left quarter moves 8 px/frame faster than the ground
    out, out_valid = prepare(mv, valid, MotionPrep(camera="median", grid=(2, 2), scale_px=4.0, clip=1.5))
    assert out.shape == (B, T, 2, 2, 2) and out_valid.all()
    assert torch.allclose(out[:, :, 0, 0, 0], torch.full((B, T), 1.5))  # 8 / 4 = 2, clipped
    assert out[:, :, :, 1, 1].abs().max() < 1e-5
