"""``mvmae probe``: what a video's H.264 stream is made of, read from the bitstream without decoding.

Demuxing and reading a few header bytes per packet runs at tens of thousands of frames per second,
so a whole dataset can be checked before a long extraction job.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mvmae.extract import h264
from mvmae.extract.errors import NoFramesError
from mvmae.extract.decoder import _avcc_or_annexb, open_video


@dataclass
class ProbeReport:
    """Stream facts of one video (sizes in px, durations in s; GOP lengths in frames)."""

    path: str
    container: str
    codec: str
    profile: str
    level: float
    height: int
    width: int
    fps: float
    num_frames: int
    num_i: int
    num_p: int
    num_b: int
    num_reference_b: int  # B pictures kept as references (x264's b-pyramid)
    gop_lengths: list[int]  # frames from each I picture to the next (last GOP included)
    longest_b_run: int  # consecutive B pictures in display order
    max_num_ref_frames: int  # DPB size from the SPS: how many references a block may choose from
    duration_s: float
    num_unparsed_packets: int = 0  # packets whose slice header does not parse (damaged data)
    num_frames_declared: int = 0  # the container's frame count (0: the container does not say)
    frame_interval_ms: list[float] = field(default_factory=list)  # [min, max] between packet
    # timestamps in display order; [] with fewer than 2 timestamped packets

    def to_dict(self) -> dict:
        return asdict(self)


def probe_video(path: str | Path) -> ProbeReport:
    """Read ``path``'s container and H.264 headers; raise a VideoError if it is not H.264 video."""
    container, stream = open_video(path)
    try:
        length_size, sps_list = _avcc_or_annexb(stream)
        pictures, unparsed, in_band, timestamps = _read_pictures(container, stream, length_size)
        sps_list = sps_list or in_band
        rate = stream.average_rate or stream.guessed_rate or 0
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / 1e6
        container_name = container.format.name
        declared = int(stream.frames or 0)
        intervals = _interval_range_ms(timestamps, stream.time_base)
    finally:
        container.close()
    if not pictures:
        raise NoFramesError(path, f"no H.264 pictures in the stream ({unparsed} damaged packets)"
                            if unparsed else "no H.264 pictures in the stream (truncated?)")
    try:
        sps = h264.parse_sps(sps_list[0]) if sps_list else None
    except h264.BitstreamError:
        sps = None
    types = "".join(info.picture_type for _, info in sorted(pictures, key=lambda p: p[0]))
    cc = stream.codec_context
    return ProbeReport(
        path=str(path),
        container=container_name,
        codec=cc.name,
        profile=sps.profile_name if sps else (cc.profile or "unknown"),
        level=sps.level_idc / 10 if sps else 0.0,
        height=cc.height,
        width=cc.width,
        fps=round(float(rate), 3),
        num_frames=len(types),
        num_i=types.count("I"),
        num_p=types.count("P"),
        num_b=types.count("B"),
        num_reference_b=sum(i.picture_type == "B" and i.is_reference for _, i in pictures),
        gop_lengths=_gop_lengths(types),
        longest_b_run=max((len(r) for r in types.replace("I", " ").replace("P", " ").split()), default=0),
        max_num_ref_frames=sps.max_num_ref_frames if sps else 0,
        duration_s=round(duration, 3),
        num_unparsed_packets=unparsed,
        num_frames_declared=declared,
        frame_interval_ms=intervals,
    )


def _read_pictures(container, stream, length_size: int | None) -> tuple[list, int, list[bytes], list[int]]:
    """Demux the stream: (pts or decode order, PictureInfo) per picture, the number of packets
    whose headers do not parse, SPS NALs found in band, and every packet's pts (time_base units)."""
    pictures, in_band_sps, timestamps = [], [], []
    unparsed = 0
    for k, packet in enumerate(container.demux(stream)):
        if not packet.size:
            continue
        if packet.pts is not None:
            timestamps.append(packet.pts)
        try:
            info, in_band = h264.picture_info(h264.iter_nals(packet, length_size))
        except h264.BitstreamError:
            unparsed += 1
            continue
        in_band_sps = in_band_sps or in_band
        if info is not None:
            pictures.append((packet.pts if packet.pts is not None else k, info))
    return pictures, unparsed, in_band_sps, timestamps


def _interval_range_ms(timestamps: list[int], time_base) -> list[float]:
    """[min, max] ms between consecutive distinct timestamps in display order ([] if < 2)."""
    ordered = sorted(set(timestamps))
    if len(ordered) < 2 or not time_base:
        return []
    steps = [b - a for a, b in zip(ordered, ordered[1:])]
    return [round(float(min(steps) * time_base) * 1000, 3), round(float(max(steps) * time_base) * 1000, 3)]


def _gop_lengths(types: str) -> list[int]:
    starts = [i for i, t in enumerate(types) if t == "I"]
    return [b - a for a, b in zip(starts, starts[1:] + [len(types)])]


def summarize_gops(lengths: list[int]) -> str:
    """One line about GOP lengths, e.g. '12 (all 20)' or '8 to 61, median 48'."""
    if not lengths:
        return "-"
    if len(set(lengths)) == 1:
        return f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]} (all {len(lengths)})"
    return f"{min(lengths)} to {max(lengths)}, median {statistics.median(lengths):g}"
