"""A raw extraction decodes with deblocking skipped on non-key frames (``ExtractConfig.loop_filter``):
no output of it depends on a P/B pixel, so it must be the same bytes as with every pixel decoded
exactly, on real B-frame streams, while the shards record how it was decoded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mvmae.extract.config import ExtractConfig
from mvmae.extract.video import extract_video


@dataclass
class _EveryPixelExact(ExtractConfig):
    """A raw extraction as before: the deblocking filter applied to every frame."""

    @property
    def loop_filter(self) -> str:
        return "none"


def _assert_same(a, b) -> None:
    for name in ("mv", "valid", "frame_types", "iframes", "iframe_index"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name


@pytest.mark.parametrize("clip", ["bikes", "pan_b3_refs4"])
def test_raw_output_is_the_same_bytes_without_the_loop_filter(clip, bikes_mp4, pan_clip_factory) -> None:
    path = bikes_mp4 if clip == "bikes" else pan_clip_factory(vx=3, vy=-1, num_frames=72, bframes=3, refs=4,
                                                              gop=24)
    fast = extract_video(path, ExtractConfig(raw=True))
    exact = extract_video(path, _EveryPixelExact(raw=True))
    assert fast.meta["skip_loop_filter"] == "nokey" and exact.meta["skip_loop_filter"] == "none"
    assert fast.valid.any() and (fast.frame_types != fast.frame_types[0]).any()  # vectors, P/B frames
    _assert_same(fast, exact)


def test_resolved_extraction_keeps_the_loop_filter_unless_asked(bikes_mp4) -> None:
    """Resolution matches pixels, so only ``skip_loop_filter="nokey"`` skips it."""
    assert ExtractConfig().loop_filter == "none"
    assert ExtractConfig(skip_loop_filter="nokey").loop_filter == "nokey"
    assert extract_video(bikes_mp4, ExtractConfig()).meta["skip_loop_filter"] == "none"
