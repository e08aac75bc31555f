"""Typed per-video errors: each names the file and a reason, and carries a short machine code.

Batch jobs catch :class:`VideoError`, record ``code`` and ``reason`` for the video and go on;
only ``mvmae.cli`` turns it into an exit status and a one-line message.
"""

from __future__ import annotations

from pathlib import Path


class VideoError(Exception):
    """A video mvmae cannot extract. ``code`` is stable (used in manifests and summaries)."""

    code = "unreadable"

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class MissingFileError(VideoError):
    code = "missing"


class UnreadableFileError(VideoError):
    """The path exists but cannot be read: a folder, a FIFO or device, permissions."""

    code = "unreadable"


class EmptyFileError(VideoError):
    code = "empty"


class NotAVideoError(VideoError):
    """The container does not open, or it has no video stream."""

    code = "not_video"


class NoVideoStreamError(NotAVideoError):
    """The container opens but holds no video stream (audio only, subtitles, data)."""

    code = "no_video_stream"


class UnsupportedCodecError(VideoError):
    code = "unsupported_codec"


class NoFramesError(VideoError):
    """The stream opened but not a single frame decoded (truncated or corrupt data)."""

    code = "no_frames"
