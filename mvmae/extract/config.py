"""How one video is extracted: the options every stage of extraction reads."""

from __future__ import annotations

from dataclasses import dataclass

_SKIP_LOOP_FILTER = ("none", "nokey")


@dataclass
class ExtractConfig:
    """How to extract one video.

    grid: MV cell size in px (4, 8 or 16). iframe_short_side: resize I-frames so the short side is
    at most this many px, aspect kept (0: source size). raw: keep FFmpeg's vectors (``src - dst``,
    px to whichever reference the block used) instead of resolving them to px per frame.
    threads: decoder slice threads (1 for exact reproducibility across machines).
    skip_loop_filter: ``"none"`` decodes every pixel exactly (default); ``"nokey"`` skips the
    deblocking filter on non-key frames: exported vectors and I-frames stay bit-identical and 720p
    decodes faster, but the P/B pixels used for reference matching change slightly, which flips
    the chosen reference of about 2% of cells on B-frame streams (measured on bikes.mp4). A raw
    extraction matches no pixels, so it always skips it (:attr:`loop_filter`): its output is the
    same bytes either way (``tests/extract/test_raw_loop_filter.py``), for a third less CPU.
    """

    grid: int = 8
    iframe_short_side: int = 256
    raw: bool = False
    threads: int = 1
    skip_loop_filter: str = "none"

    def __post_init__(self) -> None:
        if self.grid not in (4, 8, 16):
            raise ValueError(f"grid must be 4, 8 or 16 px, got {self.grid}")
        if self.iframe_short_side < 0:
            raise ValueError(f"iframe_short_side must be >= 0, got {self.iframe_short_side}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.skip_loop_filter not in _SKIP_LOOP_FILTER:
            raise ValueError(f"skip_loop_filter must be one of {_SKIP_LOOP_FILTER}")

    @property
    def method(self) -> str:
        return "raw" if self.raw else "resolved"

    @property
    def loop_filter(self) -> str:
        """The decoder's ``skip_loop_filter`` setting: ``nokey`` for a raw extraction, whose output
        no P/B pixel touches; else :attr:`skip_loop_filter`."""
        return "nokey" if self.raw else self.skip_loop_filter
