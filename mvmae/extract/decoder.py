"""Decode one H.264 video once and stream per-frame motion fields and I-frames.

:class:`VideoDecoder` opens and validates a file (clear :class:`VideoError` for anything it cannot
read), then iterates :class:`FrameField` items in display order. It keeps only what reference
resolution needs: the luma of the candidate reference pictures (``max_num_ref_frames`` I/P
pictures from the SPS plus the reference B-pictures among them, at most about twice that) and the
few B-frames waiting for their future reference, so memory does not grow with the video's length.

Determinism: FFmpeg's frame threading changes exported B-frame vectors from run to run, so the
decoder uses slice threading with ``threads`` (default 1); parallelise across videos instead.
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
import numpy as np

from mvmae.extract import h264
from mvmae.extract.config import ExtractConfig
from mvmae.extract.container import PacketReader, StreamInfo, nal_framing, open_video, quarter_turns, stream_info
from mvmae.extract.mvfield import Blocks, grid_shape, rasterize, rotate_blocks
from mvmae.extract.picture import blocks_of, luma_view, subset_blocks, upright_rgb
from mvmae.extract.resolve import Reference, resolve_velocity

log = logging.getLogger(__name__)

_PICT_LETTER = {1: "I", 2: "P", 3: "B"}


@dataclass
class FrameField:
    """One display frame, turned upright (the stream's display rotation applied). mv: float32
    (2, h, w) px per frame (0 where invalid); valid: bool (h, w)."""

    index: int
    frame_type: str  # "I", "P" or "B"
    mv: np.ndarray
    valid: np.ndarray
    iframe: np.ndarray | None  # uint8 (H', W', 3) RGB for I-frames, else None
    # for P/B frames: () -> uint8 (H', W', 3), the frame as ``iframe`` would be (a context frame
    # for a segment without I-frame); call it at once (it holds the decoded picture)
    picture: Callable[[], np.ndarray] | None = None
    pts: int | None = None  # presentation timestamp, stream time base (no timestamps: poc.Timestamper's key)
    decode_index: int = -1  # of its packet, in decode order (no packet matched: after every packet demuxed)
    corrupt: bool = False  # FFmpeg flagged it (error concealment: damaged data or a missing reference)


@dataclass
class DecodeStats:
    num_declared: int = 0  # frames the container says it has (0: it does not say)
    num_packets: int = 0  # video packets carrying a picture
    num_frames: int = 0  # frames decoded and emitted
    num_decode_errors: int = 0  # packets the decoder rejected
    num_corrupt_frames: int = 0  # frames FFmpeg flagged as concealed/corrupt
    num_hidden: int = 0  # packets the container marks discard (an edit list starting later): decoded, never shown
    warnings: list[str] = field(default_factory=list)

    @property
    def num_expected(self) -> int:
        """Frames the video should show: the container's count, or the packets read, less the
        pictures its edit list hides."""
        return max(self.num_declared, self.num_packets) - self.num_hidden

    @property
    def frames_lost(self) -> int:
        return max(0, self.num_expected - self.num_frames)


@dataclass
class _Pending:
    """A decoded frame waiting for the references it may use to be emitted."""

    index: int
    rank: int  # display position among all pictures demuxed (lost ones included)
    decode_index: int
    frame_type: str
    blocks: Blocks | None
    luma: np.ndarray | None
    iframe: np.ndarray | None
    picture: Callable[[], np.ndarray] | None = None
    pts: int | None = None
    corrupt: bool = False  # FFmpeg flagged it


class VideoDecoder:
    """Iterate a video's :class:`FrameField` items in display order (use as a context manager).
    ``opened``: (container, H.264 stream) already open (``open_stream``: a pipe); ``path`` names it."""

    def __init__(self, path: str | Path, config: ExtractConfig | None = None, opened: tuple | None = None) -> None:
        self.path = Path(path)
        self.config = config or ExtractConfig()
        self.container, self.stream = opened or open_video(self.path)
        self.stats = DecodeStats()
        self._length_size, sps = nal_framing(self.stream)
        self._sps = h264.first_sps(sps)
        self.info: StreamInfo = stream_info(self.container, self.stream, self._sps)
        self.stats.num_declared = self.info.num_frames_declared
        self.turns = 0  # counterclockwise quarter turns that make the pictures upright
        self._configure_decoder()

    def __enter__(self) -> "VideoDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _configure_decoder(self) -> None:
        cc = self.stream.codec_context
        opts = {"flags2": "+export_mvs"}
        if self.config.loop_filter != "none":
            opts["skip_loop_filter"] = self.config.loop_filter
        cc.options = opts
        cc.thread_type = "SLICE"  # frame threading makes exported B-frame vectors non-deterministic
        cc.thread_count = self.config.threads

    @property
    def display_size(self) -> tuple[int, int]:
        """(H, W) px of the pictures once turned upright (known after the first frame)."""
        h, w = self.info.size
        return (w, h) if self.turns % 2 else (h, w)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return grid_shape(self.display_size, self.config.grid)

    def __iter__(self) -> Iterator[FrameField]:
        return _FrameStream(self).run(PacketReader(self.container, self.stream, stamp=True))

    def frames(self, packets: Iterable[av.Packet]) -> Iterator[FrameField]:
        """The frames of ``packets`` (decode order) with a fresh DPB model (a resync: flush the codec first)."""
        return _FrameStream(self).run(packets)


class _FrameStream:
    """The decoding loop: demux, model the DPB from the bitstream, resolve, rasterise, emit."""

    def __init__(self, dec: VideoDecoder) -> None:
        self.dec = dec
        self.cfg = dec.config
        self.max_refs = h264.num_candidate_refs(dec._sps)
        self.by_pts: dict[int, tuple[int, h264.PictureInfo | None]] = {}  # not yet emitted
        self.num_demuxed = 0  # pictures demuxed: the next one gets this decode index
        self.all_pts: list[int] = []  # sorted pts of pictures not yet emitted or just emitted
        self.pts_offset = 0  # pictures trimmed from all_pts: display rank = offset + position
        self.last_pts: int | None = None  # pts of the frame emitted last
        self.ref_decode: list[int] = []  # decode indices of reference pictures, ascending
        self.ref_anchor: list[bool] = []  # beside ref_decode: an I/P picture (not a B)
        self.idr_decode: list[int] = []  # decode indices of IDR pictures, ascending
        self.lost: set[int] = set()  # decode indices of packets the decoder rejected
        self.ref_luma: dict[int, Reference] = {}  # decode index -> emitted reference picture
        self.pending: deque[_Pending] = deque()
        self.num_emitted = 0
        self.max_pending = self.max_refs + 32  # safety valve for broken streams
        self.num_other_size = 0  # frames dropped because their size is not the stream's

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) px of the stream's pictures (the first decoded picture's, see _adopt_size)."""
        return self.dec.info.size

    @property
    def num_decoded(self) -> int:
        """Frames out of the decoder so far, those dropped for their size included."""
        return self.dec.stats.num_frames + self.num_other_size

    def run(self, packets: Iterable[av.Packet]) -> Iterator[FrameField]:
        stats, decode_index = self.dec.stats, 0
        for packet in packets:
            if packet.size:
                self._register(packet, decode_index)
                stats.num_packets += 1
                stats.num_hidden += bool(packet.is_discard)
            frames = self._decode(packet, decode_index)
            decode_index += bool(packet.size)
            for frame in frames:
                yield from self._on_frame(frame)
        if getattr(packets, "error", ""):  # the container broke (PacketReader): flush, keep what decoded
            stats.warnings.append(packets.error)
            for frame in self._decode(None, decode_index):
                yield from self._on_frame(frame)
        while self.pending:
            yield self._emit(self.pending.popleft())
        if self.num_other_size:
            stats.warnings.append(f"{self.num_other_size} frames dropped: their size differs from "
                                  f"the stream's {self.size[0]}x{self.size[1]} (a mid-stream change)")

    def _decode(self, packet, decode_index: int) -> list:
        """Frames the decoder gives back for ``packet`` (None: flush); a rejected one is counted, its picture lost."""
        try:
            if packet is None:
                return self.dec.stream.codec_context.decode(None)
            return packet.decode()
        except (av.error.FFmpegError, ValueError) as exc:
            log.debug("%s: packet %d rejected: %s", self.dec.path, decode_index, exc)
            self.dec.stats.num_decode_errors += 1
            self.lost.add(decode_index)
            return []

    def _register(self, packet, decode_index: int) -> None:
        info, sps = None, []
        if not self.cfg.raw:  # a raw extraction models no DPB: its frame types come from the decoder
            try:
                info, sps = h264.picture_info(h264.iter_nals(packet, self.dec._length_size))
            except h264.BitstreamError:
                pass
        if sps and self.dec._sps is None:
            self.dec._sps = h264.first_sps(sps)
            self.max_refs = h264.num_candidate_refs(self.dec._sps)
        pts = packet.pts if packet.pts is not None else decode_index
        self.by_pts[pts] = (decode_index, info)
        self.num_demuxed += 1
        bisect.insort(self.all_pts, pts)
        if info is not None and info.is_reference:
            self.ref_decode.append(decode_index)
            self.ref_anchor.append(info.picture_type != "B")
        if info is not None and info.is_idr:
            self.idr_decode.append(decode_index)

    def _on_frame(self, frame) -> Iterator[FrameField]:
        stats = self.dec.stats
        if self.num_decoded == 0:
            self._adopt_rotation(frame)
            if (frame.height, frame.width) != self.size:
                self._adopt_size(frame)
        if (frame.height, frame.width) != self.size:  # the kernels index every luma alike
            self.num_other_size += 1
            pts = frame.pts if frame.pts is not None else self.num_emitted
            decode_index, _ = self.by_pts.pop(pts, (None, None))
            if decode_index is not None:
                self.lost.add(decode_index)
            return
        stats.num_frames += 1
        stats.num_corrupt_frames += bool(frame.is_corrupt)
        pts = frame.pts if frame.pts is not None else self.num_emitted
        decode_index, info = self.by_pts.pop(pts, (None, None))
        frame_type = _PICT_LETTER.get(int(frame.pict_type)) or (info.picture_type if info else "P")
        is_ref = info.is_reference if info else frame_type != "B"
        if decode_index is None:  # no packet matched this frame: order it after all demuxed
            decode_index = self.num_demuxed
        self.last_pts = pts
        item = _Pending(
            index=self.num_emitted,
            rank=self.pts_offset + bisect.bisect_left(self.all_pts, pts),
            decode_index=decode_index,
            frame_type=frame_type,
            blocks=blocks_of(frame),
            luma=None,
            iframe=self._iframe(frame) if frame_type == "I" else None,
            picture=None if frame_type == "I" else functools.partial(self._iframe, frame),
            pts=frame.pts,
            corrupt=bool(frame.is_corrupt),
        )
        self.num_emitted += 1
        if not self.cfg.raw and (is_ref or item.blocks is not None):
            item.luma = luma_view(frame, self.size)
        if not self.cfg.raw and is_ref:
            self.ref_luma[decode_index] = Reference(item.rank, item.luma)
        self.pending.append(item)
        while self.pending and (self._ready(self.pending[0]) or len(self.pending) > self.max_pending):
            yield self._emit(self.pending.popleft())
        self._evict()

    def _adopt_rotation(self, frame) -> None:
        """The display matrix (stream side data, attached to every frame by FFmpeg) of the first
        frame decides the turn of every picture and field."""
        rotation = float(frame.rotation or 0)
        turns = quarter_turns(rotation)
        if turns is None:
            self.dec.stats.warnings.append(f"display rotation {rotation:g} degrees is not a multiple of "
                                           f"90: pictures and fields kept as coded")
            turns = 0
        self.dec.turns = turns
        self.dec.info.rotation = 90 * turns

    def _adopt_size(self, frame) -> None:
        """The first picture is not the size the container said: the pictures are right."""
        size = (frame.height, frame.width)
        self.dec.stats.warnings.append(f"the container says {self.size[0]}x{self.size[1]} px, the "
                                       f"pictures are {size[0]}x{size[1]}: using the pictures' size")
        self.dec.info.size = size

    def _window(self, decode_index: int) -> list[int]:
        """Decode indices of the candidate references when ``decode_index`` is decoded.

        The DPB holds ``max_num_ref_frames`` pictures in a sliding window, but x264's b-pyramid
        removes its reference B-pictures early (memory management commands), keeping older
        P-pictures that a plain window would drop. So the window counts only I/P references
        towards the limit and also takes the reference B-pictures inside it: a superset of the
        real DPB, among which block matching chooses.
        """
        end = bisect.bisect_left(self.ref_decode, decode_index)
        k = bisect.bisect_right(self.idr_decode, decode_index) - 1
        idr = self.idr_decode[k] if k >= 0 else -1
        refs, anchors = [], 0
        for i in range(end - 1, -1, -1):
            if self.ref_decode[i] < idr or anchors == self.max_refs:
                break
            refs.append(self.ref_decode[i])
            anchors += self.ref_anchor[i]
        return refs[::-1]

    def _ready(self, item: _Pending) -> bool:
        if self.cfg.raw or item.blocks is None:
            return True
        return all(r in self.ref_luma or r in self.lost for r in self._window(item.decode_index))

    def _evict(self) -> None:
        """Drop reference pictures and bookkeeping that no frame still to come can use."""
        if self.last_pts is not None:  # pictures displayed before the last emitted one are lost
            for pts in [p for p in self.by_pts if p < self.last_pts]:
                self.lost.add(self.by_pts.pop(pts)[0])
        if self.cfg.raw:  # no frame waits for a reference: only display ranks to forget
            self.lost.clear()
            self._trim(self.num_demuxed)
            return
        waiting = [p.decode_index for p in self.pending] + [d for d, _ in self.by_pts.values()]
        first = min(waiting, default=self.num_demuxed)
        window = self._window(first)
        oldest = window[0] if window else first
        for d in [d for d in self.ref_luma if d < oldest]:
            del self.ref_luma[d]
        self._trim(oldest)

    def _trim(self, oldest: int) -> None:
        """Forget bookkeeping older than ``oldest`` (amortised: only once enough has piled up)."""
        cut = bisect.bisect_left(self.ref_decode, oldest)
        if cut > 64:
            del self.ref_decode[:cut], self.ref_anchor[:cut]
            k = bisect.bisect_right(self.idr_decode, oldest) - 1
            if k > 0:
                del self.idr_decode[:k]
            self.lost = {d for d in self.lost if d >= oldest}
        if self.last_pts is not None:
            done = bisect.bisect_left(self.all_pts, self.last_pts)  # displayed before the last
            if done > 256:
                del self.all_pts[:done]
                self.pts_offset += done

    def _emit(self, item: _Pending) -> FrameField:
        h, w = self.dec.grid_shape
        if item.blocks is None:
            mv, valid = np.zeros((2, h, w), np.float32), np.zeros((h, w), bool)
        elif self.cfg.raw:
            mv, valid = self._rasterize(item.blocks, item.blocks.motion)
        else:
            refs = [self.ref_luma[d] for d in self._window(item.decode_index) if d in self.ref_luma]
            velocity, ok = resolve_velocity(item.blocks, item.luma, item.rank, refs)
            if ok.all():
                mv, valid = self._rasterize(item.blocks, velocity)
            else:
                mv, valid = self._rasterize(subset_blocks(item.blocks, ok), velocity[:, ok])
        return FrameField(item.index, item.frame_type, mv, valid, item.iframe, item.picture, item.pts,
                          item.decode_index, item.corrupt)

    def _rasterize(self, blocks: Blocks, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (2, N) in coded px onto the upright grid: blocks turned as the picture is."""
        blocks, vectors, size = rotate_blocks(blocks, vectors, self.size, self.dec.turns)
        return rasterize(blocks, vectors, size, self.cfg.grid)

    def _iframe(self, frame) -> np.ndarray:
        return upright_rgb(frame, self.cfg.iframe_short_side, self.dec.turns)
