"""Bounded memory: the decoder keeps a few reference lumas and a short look-ahead, whatever the
video's length. Instrumented by stepping ``_FrameStream.run(packets)`` and reading its state between frames.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from mvmae.extract.container import PacketReader
from mvmae.extract.decoder import VideoDecoder, _FrameStream


def _max_state(path: Path) -> tuple[int, int, int, int]:
    """(frames, max reference lumas held, max pending look-ahead, max_num_ref_frames)."""
    with VideoDecoder(path) as dec:
        stream = _FrameStream(dec)
        num_frames = max_refs = max_pending = 0
        for item in stream.run(PacketReader(dec.container, dec.stream, stamp=True)):  # as iter(dec)
            assert item.index == num_frames
            num_frames += 1
            max_refs = max(max_refs, len(stream.ref_luma))
            max_pending = max(max_pending, len(stream.pending))
        return num_frames, max_refs, max_pending, dec.info.max_num_ref_frames


def test_long_pyramid_clip_holds_few_pictures(long_pan_mp4) -> None:
    """600 frames, 3 B-frames with b-pyramid, refs 4 (the SPS says 4).

    Bound on reference lumas: the candidate window counts max_num_ref_frames I/P references and
    also holds the reference Bs between them (x264 removes those early, keeping older Ps: at most
    one per B-group with b-pyramid, so at most max_num_ref_frames of them), plus, because a
    P-frame comes out of the decoder (display order) only after its group's Bs which wait for it,
    that P-frame and the middle B: 2 * max_num_ref_frames + 2, whatever the length (measured 10).
    Without b-pyramid the bound is max_num_ref_frames + 1.
    """
    num_frames, max_refs, max_pending, sps_refs = _max_state(long_pan_mp4)
    assert num_frames == 600 and sps_refs == 4
    assert max_refs <= 2 * sps_refs + 2
    assert max_pending <= 3 + 2  # bframes + 2


@pytest.mark.parametrize(("bframes", "refs"), [(0, 1), (0, 4), (1, 3), (1, 5)])
def test_clip_without_pyramid_holds_dpb_plus_one(pan_clip_factory, bframes: int, refs: int) -> None:
    path = pan_clip_factory(vx=2, vy=1, num_frames=96, bframes=bframes, refs=refs, gop=250)
    num_frames, max_refs, max_pending, sps_refs = _max_state(path)
    assert num_frames == 96 and sps_refs >= refs
    assert max_refs <= sps_refs + 1
    assert max_pending <= bframes + 2


def _peak_bytes(path: Path, num_frames: int) -> int:
    """tracemalloc peak while iterating the first ``num_frames`` frames without keeping them."""
    gc.collect()
    tracemalloc.start()
    try:
        with VideoDecoder(path) as dec:
            for i, _ in enumerate(dec):
                if i + 1 == num_frames:
                    break
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_length(long_pan_mp4) -> None:
    _peak_bytes(long_pan_mp4, 20)  # warm-up: imports, compiled-kernel dispatch caches
    short, long = _peak_bytes(long_pan_mp4, 150), _peak_bytes(long_pan_mp4, 600)
    assert long < 2 * short, (short, long)
    # A per-frame leak of anything frame-sized (an mv field here is 3.5 kB, a Blocks ~1-2 kB)
    # would add > 1 kB per frame. Measured ~240 B/frame: per-picture bookkeeping (pts ranks,
    # reference decode indices) and cyclic garbage the collector has not reached yet.
    assert (long - short) / 450 < 1024, (short, long)
