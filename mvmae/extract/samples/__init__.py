"""A small real H.264 sample shipped with mvmae, for a first run and the docs.

``pan_sample.mp4``: 320x240, 25 fps, 75 frames (3 s), libx264 High profile, 3 B-frames, 3
reference frames (the SPS says 4: b-pyramid), GOP 25; a camera pan over scikit-image's ``coffee``
photograph whose content moves (+2.5, -1.0) px per frame, so the extracted field is known.
Made with ``tests/media.py``: ``make_pan_clip(path, vx=2.5, vy=-1.0, num_frames=75,
size=(240, 320), bframes=3, refs=3, gop=25, crf=23, image="coffee")``.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_VELOCITY = (2.5, -1.0)  # px per frame, (dx, dy) of the content


def sample_path() -> Path:
    """Path of the bundled sample clip."""
    return Path(__file__).with_name("pan_sample.mp4")
