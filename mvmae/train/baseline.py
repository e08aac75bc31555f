"""A plain 3D CNN classifier: the baseline the MV-MAE transformer must beat.

``mvmae train --arch cnn3d`` trains it by the same command, data, clips and schedule as the
MV-MAE classifier (``model.MVMAEClassifier``), so a comparison differs by the model alone. Over
the MV field (``inputs='mv'``) its input is the camera-compensated, normalised field the Motion
encoder's tokens are cut from, plus the valid mask as a third channel; over the I-frames
(``inputs='iframe'``) the segments' I-frames as a short RGB video; ``both`` runs one trunk per
input and concatenates their pooled features. Each trunk: a stem and three stages of two 3x3x3
convolutions (BatchNorm, ReLU) halving space, the last two also halving time, then a global
average pool.
"""

from __future__ import annotations

import torch
from torch import nn

from mvmae.train.model import IMAGENET_MEAN, IMAGENET_STD
from mvmae.train.motion import compensate_camera, normalize_motion


def _conv(c_in: int, c_out: int, stride: tuple[int, int, int] = (1, 1, 1)) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class Trunk3D(nn.Module):
    """(B, C, T, H, W) -> (B, width * 4) pooled features."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.layers = nn.Sequential(
            _conv(in_channels, w),
            _conv(w, w, (1, 2, 2)), _conv(w, w),
            _conv(w, 2 * w, (2, 2, 2)), _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, (2, 2, 2)), _conv(4 * w, 4 * w),
        )
        self.num_features = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).mean(dim=(2, 3, 4))  # (B, 4w)


class CNN3DClassifier(nn.Module):
    """The baseline over ``cfg.inputs``; ``forward(mv, valid, iframes)`` as the MV-MAE
    classifier's. ``cfg.dim`` sets nothing here; ``cnn_width`` the first stage's channels."""

    def __init__(self, cfg, spec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        features = 0
        if cfg.inputs in ("mv", "both"):
            self.motion_trunk = Trunk3D(3, cfg.cnn_width)
            features += self.motion_trunk.num_features
        if cfg.inputs in ("iframe", "both"):
            self.image_trunk = Trunk3D(3, cfg.cnn_width)
            features += self.image_trunk.num_features
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1), persistent=False)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(features, cfg.num_classes))

    def encoders(self) -> list[nn.Module]:
        """No pretrained parts: everything trains from the start."""
        return []

    def motion_input(self, mv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """mv (B, T, 2, h, w) px per frame, valid (B, T, h, w) -> (B, 3, T, h, w)."""
        compensated = compensate_camera(mv, valid, self.spec.camera)  # (B, T, 2, h, w)
        x = normalize_motion(compensated, self.spec.scale_px, self.spec.clip)  # (B, T, 2, h, w)
        x = torch.cat([x, valid[:, :, None].to(x.dtype)], dim=2)  # (B, T, 3, h, w)
        return x.transpose(1, 2)  # (B, 3, T, h, w)

    def forward(self, mv: torch.Tensor, valid: torch.Tensor, iframes: torch.Tensor) -> torch.Tensor:
        parts = []
        if hasattr(self, "motion_trunk"):
            parts.append(self.motion_trunk(self.motion_input(mv, valid)))
        if hasattr(self, "image_trunk"):
            x = iframes.float().div(255).transpose(1, 2)  # (B, 3, K, H, W)
            parts.append(self.image_trunk((x - self.mean) / self.std))
        return self.head(torch.cat(parts, dim=-1))  # (B, num_classes)
