"""One tiny real H.264 clip per container, copied under the names a dataset's tree uses."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import media
except ImportError:
    from tests import media


@pytest.fixture(scope="session")
def tiny_clips(tmp_path_factory) -> dict[str, Path]:
    """Real libx264 clips, 12 frames of 64x48 px, in .avi and .mp4 ({suffix: path})."""
    folder = tmp_path_factory.mktemp("tiny_clips")
    return {suffix: media.make_pan_clip(folder / f"clip{suffix}", vx=2, vy=1, num_frames=12, size=(48, 64))
            for suffix in (".avi", ".mp4")}

