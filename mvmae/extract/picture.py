"""What one decoded picture gives the decoder: its exported motion-vector blocks, a view of its
luma plane, and its RGB image turned upright (the stream's display rotation applied)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from av.sidedata.sidedata import SideDataContainer, Type

from mvmae.extract.mvfield import Blocks

_MV_TYPE = Type.MOTION_VECTORS


def upright_rgb(frame, short_side: int, turns: int) -> np.ndarray:
    """The frame as uint8 (H', W', 3) RGB: short side resized to at most ``short_side`` px
    (aspect kept, never upscaled; 0: source size), then turned ``turns`` x 90 degrees
    counterclockwise as the display matrix says (``np.rot90``)."""
    h, w = frame.height, frame.width
    if short_side and min(h, w) > short_side:
        s = short_side / min(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    # threads=1: PyAV (18.1.1) keeps one reformatter per thread; with swscale's slice threads, a
    # process forked from another thread frees it and waits forever for threads it does not have
    # (a DataLoader worker started from a helper thread hung so). One thread a process is also
    # what extraction workers want.
    image = frame.reformat(width=w, height=h, format="rgb24", threads=1).to_ndarray()  # (H', W', 3)
    return np.ascontiguousarray(np.rot90(image, turns)) if turns % 4 else image


def motion_vectors(frame):
    """The frame's exported motion vectors (PyAV's ``MotionVectors`` side data), or None.

    PyAV's ``SideDataContainer`` looks side data up by ``Type`` (17.0 and 18.0 checked), but what
    iterating it yields changed in 18.1.1: the side-data objects before, the types since. The
    lookup by type reads both; a container that has no lookup (older PyAV) is searched.
    """
    # PyAV 18's ``frame.side_data`` caches a container that points back at the frame: a cycle
    # that frees decoded pictures only when the cycle collector runs (memory creeps up and
    # decoding slows). A container of our own is dropped as soon as we return.
    container = SideDataContainer(frame)
    if isinstance(container, Mapping):
        return container.get(_MV_TYPE)
    return next((sd for sd in container if sd.type == _MV_TYPE), None)


def blocks_of(frame) -> Blocks | None:
    sd = motion_vectors(frame)
    if sd is None or not len(sd):
        return None
    return Blocks.from_side_data(sd)  # read in place: no structured array in between


def luma_view(frame, size: tuple[int, int]) -> np.ndarray:
    """The Y plane as a uint8 (H, W) view of the frame's own buffer (no copy, no conversion).

    The view keeps the decoded frame alive; FFmpeg's buffer pool recycles it once the view is
    dropped, which avoids allocating (and page-faulting) a fresh luma array per frame.
    """
    plane = frame.planes[0]
    buf = np.frombuffer(plane, np.uint8)
    rows = buf.size // plane.line_size
    return buf[: rows * plane.line_size].reshape(rows, plane.line_size)[: size[0], : size[1]]


def subset_blocks(blocks: Blocks, keep: np.ndarray) -> Blocks:
    return Blocks(
        blocks.x0[keep], blocks.y0[keep], blocks.bw[keep], blocks.bh[keep],
        blocks.motion[:, keep], blocks.direction[keep],
    )
