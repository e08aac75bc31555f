"""``SynthConfig``: what ``mvmae synth`` makes, for both presets."""

from __future__ import annotations

from dataclasses import dataclass

from mvmae.synth.patterns import PATTERNS
from mvmae.synth.trajectories import TRAJECTORIES

PRESETS = {"basic": PATTERNS, "trajectories": TRAJECTORIES}

# Preset -> defaults of the fields left at None: num_classes, size (H, W) px, num_frames, actor_px,
# gop. trajectories: one I-frame per clip (x264's default GOP, 250, is longer than a clip), since
# the actor's positions in I-frames 24 frames apart tell its path's shape from a few points (a
# random forest on the true positions at frames 0, 24 and 48 tells 47-54% of the clips apart,
# chance 8%; on frame 0 alone 10%): an I-frame-only model must not see the motion.
_DEFAULTS = {
    "basic": {"num_classes": 4, "size": (128, 160), "num_frames": 48, "actor_px": 24, "gop": 24},
    "trajectories": {"num_classes": 12, "size": (128, 160), "num_frames": 64, "actor_px": 40,
                     "gop": 250},
}


@dataclass
class SynthConfig:
    """What to make. ``preset``: "basic" (8 direction-defined classes: walk right/left/down/up,
    circle cw/ccw, pace horizontal/vertical) or "trajectories" (12 path shapes, see
    :mod:`mvmae.synth.trajectories`). num_classes: the first N of the preset's classes (default 4
    for basic, 12 for trajectories). size: (H, W) px, even (default 128x160). num_frames per clip
    (default 48 basic, 64 trajectories). actor_px: the labelled actor's diameter (24 / 40).

    Splits: per class, ``round(clips_per_class * val_ratio)`` clips go to val.txt (at least one
    when the ratio is > 0), then ``round(clips_per_class * test_ratio)`` to test.txt, the rest
    (at least one) to train.txt. num_unlabelled: clips of an extra pool (unlabelled.txt) drawn
    from the same classes on a separate random stream, so the labelled clips do not depend on it.

    Trajectories only: speed_range (px per frame, the actor's mean speed over the ground),
    start_ratio_max (the actor stands still for the first 0..this share of the frames),
    drift_px_per_frame (camera pan, each axis uniform in +-this), drift_change_px_per_frame (the
    pan's velocity changes linearly by up to +-this over a clip, each axis), num_distractors
    (min, max) other moving things per clip. Encoder: bframes, refs, gop (an IDR every gop
    frames; default 24 basic, 250 trajectories: one I-frame per clip), crf.
    """

    num_classes: int | None = None
    clips_per_class: int = 8
    size: tuple[int, int] | None = None
    num_frames: int | None = None
    fps: int = 25
    seed: int = 0
    val_ratio: float = 0.25
    bframes: int = 2
    refs: int = 3
    gop: int | None = None
    crf: int = 23
    actor_px: int | None = None
    preset: str = "basic"
    test_ratio: float = 0.0
    num_unlabelled: int = 0
    speed_range: tuple[float, float] = (0.8, 2.0)
    start_ratio_max: float = 0.2
    drift_px_per_frame: float = 0.75
    drift_change_px_per_frame: float = 0.5
    num_distractors: tuple[int, int] = (1, 2)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        for name, value in _DEFAULTS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.size = tuple(self.size)
        classes = PRESETS[self.preset]
        if not 2 <= self.num_classes <= len(classes):
            raise ValueError(f"num_classes must be 2..{len(classes)} for preset {self.preset}, "
                             f"got {self.num_classes}")
        if self.gop < 1:
            raise ValueError(f"gop must be >= 1, got {self.gop}")
        if self.clips_per_class < 1 or self.num_frames < 2:
            raise ValueError("clips_per_class must be >= 1 and num_frames >= 2")
        h, w = self.size
        least = (4 if self.preset == "basic" else 3) * self.actor_px  # room for the paths
        if h % 2 or w % 2 or min(h, w) < least:
            raise ValueError(f"size must be even and at least {least} px, got {self.size}")
        self._check_splits()
        if self.preset == "trajectories":
            self._check_trajectories()

    def _check_splits(self) -> None:
        if not 0 <= self.val_ratio < 1 or not 0 <= self.test_ratio < 1:
            raise ValueError(f"val_ratio and test_ratio must be in [0, 1), got {self.val_ratio}, "
                             f"{self.test_ratio}")
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(f"val_ratio + test_ratio must be < 1 (train needs clips), got "
                             f"{self.val_ratio} + {self.test_ratio}")
        if self.num_unlabelled < 0:
            raise ValueError(f"num_unlabelled must be >= 0, got {self.num_unlabelled}")

    def _check_trajectories(self) -> None:
        lo, hi = self.speed_range
        if not 0 < lo <= hi:
            raise ValueError(f"speed_range must be 0 < min <= max px per frame, got {self.speed_range}")
        if not 0 <= self.start_ratio_max < 0.5:
            raise ValueError(f"start_ratio_max must be in [0, 0.5), got {self.start_ratio_max}")
        if self.drift_px_per_frame < 0 or self.drift_change_px_per_frame < 0:
            raise ValueError("drift_px_per_frame and drift_change_px_per_frame must be >= 0")
        lo_d, hi_d = self.num_distractors
        if not 0 <= lo_d <= hi_d <= 4:
            raise ValueError(f"num_distractors must be 0 <= min <= max <= 4, got {self.num_distractors}")
        if self.num_frames < 8:
            raise ValueError(f"num_frames must be >= 8 for trajectories, got {self.num_frames}")

    @property
    def classes(self) -> list[str]:
        """The class names in label order (the first ``num_classes`` of the preset's)."""
        return list(PRESETS[self.preset])[: self.num_classes]
