"""Opening a video file and reading its H.264 packets: what the decoder and the probe share.

:func:`open_video` turns every way a file can fail to open into a typed :class:`VideoError`;
:func:`nal_framing` says how the stream's packets frame their NAL units; :func:`stream_info`
gathers the facts known before decoding; :class:`PacketReader` iterates the packets and, where
the container cannot be read further (a damaged sample table or index), stops there and records
why, so that both readers keep what came before, as extraction does.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import av

from mvmae.extract import errors, h264, poc

# errno values of av.open that mean the file cannot be read, not that it is not a video.
_UNREADABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR}


@dataclass
class StreamInfo:
    """Facts about a video stream known right after opening it."""

    container: str
    codec: str
    profile: str
    size: tuple[int, int]  # (H, W) px of the decoded pictures
    fps: float
    num_frames_declared: int  # from the container; 0 when it does not say
    duration_s: float
    max_num_ref_frames: int  # from the SPS, within H.264's bound of 16 (0 when unknown)
    rotation: int = 0  # display rotation, degrees counterclockwise (0/90/180/270), once a frame decoded


def open_video(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and return its container and first video stream, or raise a VideoError:
    missing, unreadable (a folder, permissions), empty, not_video, no_video_stream or
    unsupported_codec."""
    p = Path(path)
    _check_file(p)
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        if isinstance(exc, OSError) and exc.errno in _UNREADABLE_ERRNOS:
            raise errors.UnreadableFileError(p, f"cannot be read ({ffmpeg_reason(exc)})")
        raise errors.NotAVideoError(p, f"not a readable video container ({ffmpeg_reason(exc)})")
    return container, _h264_stream(container, p)


def open_stream(source: BinaryIO, name: str, format: str | None = None, analyze_s: float = 1.0,
                ) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a live byte stream (a pipe: read as it arrives, never seeked) and return its container
    and first video stream, or raise a VideoError named ``name``: not_video, no_video_stream or
    unsupported_codec. ``format``: FFmpeg's demuxer (``mpegts``, ``h264``; None: probed from the
    first bytes). ``analyze_s``: seconds of stream FFmpeg reads before the first packet to learn
    the stream's parameters (its frame rate), which delays only the start."""
    options = {"analyzeduration": str(round(analyze_s * 1e6))}
    try:
        container = av.open(source, format=format, options=options, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise errors.NotAVideoError(name, f"not a readable video stream ({ffmpeg_reason(exc)})")
    return container, _h264_stream(container, name)


def _h264_stream(container, p: str | Path) -> av.video.stream.VideoStream:
    """The container's first video stream if it is H.264; else close it and raise the VideoError."""
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise errors.NoVideoStreamError(p, f"no video stream (found: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for the stream's codec tag
        container.close()
        raise errors.UnsupportedCodecError(p, "video codec unknown to FFmpeg (an exotic codec tag, "
                                              "or a damaged header); mvmae reads H.264 only")
    codec = stream.codec_context.name
    if codec != "h264":
        long_name = stream.codec_context.codec.long_name
        container.close()
        raise errors.UnsupportedCodecError(p, f"codec is {codec} ({long_name}); mvmae reads H.264 only")
    return stream


def _check_file(p: Path) -> None:
    """Raise the VideoError of a path that is no readable, non-empty regular file."""
    try:
        info = p.stat()
    except FileNotFoundError:
        raise errors.MissingFileError(p, "no such file") from None
    except OSError as exc:  # a folder above it this user may not enter, a loop of links
        raise errors.UnreadableFileError(p, f"cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise errors.UnreadableFileError(p, "a folder, not a file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: opening it could block
        raise errors.UnreadableFileError(p, "not a regular file")
    if info.st_size == 0:
        raise errors.EmptyFileError(p, "empty file (0 bytes)")


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's reason for an error, without the file name PyAV appends."""
    return getattr(exc, "strerror", None) or str(exc).split(":")[0]


def nal_framing(stream) -> tuple[int | None, list[bytes]]:
    """(NAL length-prefix size, or None for Annex B start codes; SPS NAL units of the extradata)."""
    extradata = bytes(stream.codec_context.extradata or b"")
    if extradata[:1] == b"\x01":
        return h264.parse_avcc(extradata)
    sps = [n for n in h264.iter_nals(extradata, None) if n[0] & 0x1F == h264.NAL_SPS]
    return None, sps


def stream_info(container, stream, sps: h264.SeqParams | None) -> StreamInfo:
    """The stream's facts from the container and the SPS (``sps``: None when none parses)."""
    cc = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate or 0
    if stream.duration:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = (container.duration or 0) / 1e6
    return StreamInfo(
        container=container.format.name,
        codec=cc.name,
        profile=sps.profile_name if sps else (cc.profile or "unknown"),
        size=(cc.height, cc.width),
        fps=float(rate),
        num_frames_declared=int(stream.frames or 0),
        duration_s=duration,
        # a damaged SPS can say billions; no stream may use more than H.264's bound
        max_num_ref_frames=min(sps.max_num_ref_frames, h264.MAX_REF_FRAMES) if sps else 0,
    )


class PacketReader:
    """The stream's packets in decode order, the last one (empty) the decoder's flush.

    Where the container cannot be read further (a damaged index or sample size: FFmpeg fails to
    demux the next packet), the packets end there without the flush packet, and ``error`` says
    after how many packets and why. num_packets: packets carrying data read so far. ``stamp``: a
    stream without timestamps (an elementary stream) gets display-order keys as pts
    (``poc.Timestamper``), so that pictures can be ranked in display order.
    """

    def __init__(self, container, stream, stamp: bool = False) -> None:
        self._demux = container.demux(stream)
        self.num_packets = 0
        self.error = ""
        self._stamper = None
        if stamp:
            length_size, sps = nal_framing(stream)
            self._stamper = poc.Timestamper(length_size, h264.first_sps(sps))

    def __iter__(self) -> Iterator[av.Packet]:
        packets = self._read()
        return self._stamper.stamp(packets) if self._stamper else packets

    def _read(self) -> Iterator[av.Packet]:
        while True:
            try:
                packet = next(self._demux)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.error = f"container unreadable after {self.num_packets} packets ({ffmpeg_reason(exc)})"
                return
            self.num_packets += bool(packet.size)
            yield packet


def quarter_turns(rotation_deg: float) -> int | None:
    """Counterclockwise quarter turns (0-3) of a display rotation in degrees (FFmpeg's
    ``av_display_rotation_get``, e.g. PyAV's ``VideoFrame.rotation``); None when it is not a
    multiple of 90 (within 1 degree)."""
    turns = rotation_deg / 90.0
    if abs(turns - round(turns)) * 90.0 > 1.0:
        return None
    return int(round(turns)) % 4
