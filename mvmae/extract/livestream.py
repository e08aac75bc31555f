"""A live H.264 stream (a pipe: MPEG-TS or an elementary stream) decoded as it arrives, damage
found and decoding resynchronised at the next keyframe.

:class:`LiveStream` reads packets from a byte stream that cannot be seeked, decodes them with the
extractor's own frame stream (``VideoDecoder.frames``: the same DPB model, reference resolution
and rasterisation as ``extract_video``) and gives :data:`Event` items in stream order: each frame
with its display time, and for a broken stretch a :class:`Damage`, then a :class:`Skipping` as
packets are dropped and a :class:`Resync` at the keyframe where decoding starts afresh.

Damage is what FFmpeg lets one see, checked per packet and per frame:

- a packet the decoder rejects (``av.error.InvalidDataError`` and its kin);
- an error FFmpeg logs while demuxing or decoding a packet ("error while decoding MB",
  "co located POCs unavailable", ...: the decoder conceals most damage without raising, and an
  elementary stream has no timestamps to show pictures lost). PyAV counts FFmpeg's ERROR-level
  messages once its log callback is installed (``av.logging.get_last_error``); the reader installs
  it at level PANIC, so nothing is printed;
- a packet the demuxer flags corrupt (MPEG-TS continuity counter errors);
- a jump of decode timestamps: pictures whose packets never arrived;
- timestamps that go back;
- a frame FFmpeg flags corrupt (its error concealment ran: damaged slices, a missing reference).

FFmpeg conceals and goes on; its pictures up to the next keyframe predict from concealed ones, so
the reader drops everything after the damage, flushes the decoder and waits for a keyframe (an
IDR picture, or a packet the demuxer marks key: a recovery point). A frame decoded after a
damaged picture but shown before it (a B-frame) is damaged too: :class:`Damage` starts at the
earliest such frame already given, so a consumer must hold each frame until later frames can no
longer damage it (``reorder_margin_s``).

Times are seconds of display time from the first keyframe's timestamp. An elementary stream has
no timestamps: its pictures are put in display order by their picture order count
(``poc.Timestamper``, as the extractor does for files) and its frames counted at the stream's frame
rate (the SPS's timing, else 25 fps), so lost pictures do not count. A stream that starts between keyframes (joined mid-way) is read
from its first keyframe on.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Union

import av

from mvmae.extract import h264, poc
from mvmae.extract.container import ffmpeg_reason, nal_framing, open_stream
from mvmae.extract.config import ExtractConfig
from mvmae.extract.decoder import FrameField, VideoDecoder

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0  # when the stream does not say: FFmpeg's guess for raw H.264 too
_MAX_DEMUX_ERRORS = 8  # demuxer failures in a row, without a packet between them, that end the stream
_RECENT_FRAMES = 64  # frames remembered to find the earliest one a damaged picture reaches


@dataclass
class TimedFrame:
    """A frame decoded from undamaged data: ``time_s`` its display time."""

    time_s: float
    field: FrameField


@dataclass
class Damage:
    """A broken stretch: nothing shown from ``start_s`` on is usable until the next :class:`Resync`."""

    start_s: float
    reason: str


@dataclass
class Skipping:
    """Packets dropped while waiting for a keyframe: the damaged stretch reaches ``time_s``."""

    time_s: float


@dataclass
class Resync:
    """Decoding starts afresh at the keyframe shown at ``time_s``: the damaged stretch ends there."""

    time_s: float


Event = Union[TimedFrame, Damage, Skipping, Resync]


class _Damaged(Exception):
    """Raised inside the packet feed to stop a segment: ``decode_index`` is the first packet of
    the segment that may be damaged, ``packet`` the one that showed it (not decoded)."""

    def __init__(self, reason: str, decode_index: int, packet=None) -> None:
        super().__init__(reason)
        self.reason, self.decode_index, self.packet = reason, decode_index, packet


class LiveStream:
    """Decode a live stream from ``source`` (a binary file object read as data arrives, e.g.
    ``sys.stdin.buffer.raw``) named ``name`` in messages: ``events()``. ``format``: FFmpeg's
    demuxer (``mpegts``, ``h264``; None: probed); ``analyze_s``: stream seconds read to learn its
    parameters before the first packet (``container.open_stream``). Raises a ``VideoError`` when
    the stream cannot be opened or is not H.264."""

    def __init__(self, source: BinaryIO, name: str, config: ExtractConfig, format: str | None = None,
                 analyze_s: float = 1.0) -> None:
        self.name = name
        self._quiet_log = av.logging.get_level() is None
        if self._quiet_log:  # count FFmpeg's errors (get_last_error), print nothing
            av.logging.set_level(av.logging.PANIC)
        try:
            self.decoder = VideoDecoder(name, config, opened=open_stream(source, name, format, analyze_s))
        except BaseException:
            self._restore_log()
            raise
        self.stream = self.decoder.stream
        length_size, sps = nal_framing(self.stream)
        self._stamper = poc.Timestamper(length_size, h264.first_sps(sps))
        self.time_base = float(self.stream.time_base)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else DEFAULT_FPS
        if not rate:
            log.warning("%s: the stream does not say its frame rate: assuming %g fps", name, DEFAULT_FPS)
        self.frame_s = 1.0 / self.fps
        self.num_damaged = 0  # damaged stretches found
        self.max_b_run = 0  # the longest run of B-frames seen, in display order
        self._b_run = 0
        self._started = False  # the first keyframe arrived
        self._t0: int | None = None  # timestamp of time 0 (the first keyframe), stream time base
        self._offset_s = 0.0  # added after timestamps went back, so that time keeps going forward
        self._last_s = -self.frame_s  # display time of the last frame given
        self._floor_s = 0.0  # display time of the keyframe the segment started at
        self._last_dts: int | None = None
        self._recent: deque[tuple[float, int]] = deque(maxlen=_RECENT_FRAMES)  # (time_s, decode index)
        self.num_packets = 0

    def close(self) -> None:
        self.decoder.close()
        self._restore_log()

    def _restore_log(self) -> None:
        if self._quiet_log:
            av.logging.set_level(None)

    @property
    def config(self) -> ExtractConfig:
        return self.decoder.config

    @property
    def display_size(self) -> tuple[int, int]:
        """(H, W) px of the pictures once upright (known once a frame decoded)."""
        return self.decoder.display_size

    @property
    def reorder_margin_s(self) -> float:
        """How long after a frame's display time a later frame can still show it damaged: a
        B-frame's future reference is shown at most the longest B-run plus one frame later."""
        return (self.max_b_run + 1) * self.frame_s

    def events(self) -> Iterator[Event]:
        """The stream's frames and damage, in order, until it ends; see the module docstring.
        Ends without any event when no keyframe arrives."""
        packets = self._packets()
        keyframe = yield from self._skip_to_keyframe(packets, None)
        while keyframe is not None:
            damage = yield from self._segment(keyframe, packets)
            if damage is None:
                return
            self.num_damaged += 1
            start = min((t for t, d in self._recent if d >= damage.decode_index), default=self._last_s + self.frame_s)
            log.warning("%s: damaged stream at %.3f s: %s", self.name, start, damage.reason)
            yield Damage(start, damage.reason)
            self.stream.codec_context.flush_buffers()  # drop concealed pictures and their references
            keyframe = yield from self._skip_to_keyframe(packets, damage.packet)
            if keyframe is not None:
                log.warning("%s: resynchronised at the keyframe at %.3f s", self.name, self._floor_s)

    def _segment(self, keyframe, packets: Iterator) -> Iterator[Event]:
        """Decode from ``keyframe`` until the stream ends (returns None) or shows damage (returns
        the ``_Damaged``); frames of a segment stopped by damage that were not given are dropped."""
        damage: list[_Damaged] = []
        self._recent.clear()
        self._last_dts = keyframe.dts
        frames = self.decoder.frames(self._checked(keyframe, packets, damage))
        try:
            for field in frames:
                if damage:
                    break
                if field.corrupt:
                    damage.append(_Damaged("FFmpeg flagged a decoded frame corrupt (error concealment)",
                                           field.decode_index))
                    self._recent.append((self._frame_time(field), field.decode_index))
                    break
                event = self._timed(field)
                if event is not None:
                    yield event
        finally:
            frames.close()
        return damage[0] if damage else None

    def _checked(self, keyframe, packets: Iterator, damage: list) -> Iterator[av.Packet]:
        """The segment's packets for the frame stream, from ``keyframe``; stops at the first sign
        of damage, recorded in ``damage`` (the frame stream then drains what it holds, which
        ``_segment`` ignores)."""
        stats = self.decoder.stats
        rejected, logged = stats.num_decode_errors, av.logging.get_last_error()[0]
        yield keyframe
        decode_index = int(bool(keyframe.size))
        for packet in packets:
            reason = self._damage_in(packet, stats.num_decode_errors - rejected,
                                     av.logging.get_last_error()[0] - logged)
            if reason:  # the previous packet's decoding (or this one's demuxing) showed it
                damage.append(_Damaged(reason, max(decode_index - 1, 0), packet))
                return
            yield packet
            decode_index += bool(packet.size)

    def _damage_in(self, packet, num_rejected: int, num_logged: int) -> str:
        """Why decoding must stop before ``packet`` ('' if it may go on): the decoder rejected
        the previous packet or logged an error, or this packet is flagged or comes after a jump
        of timestamps."""
        if num_rejected:
            return "the decoder rejected a packet (invalid data)"
        if num_logged:
            _, (_, source, message) = av.logging.get_last_error()
            return f"FFmpeg {source or 'error'}: {message.strip()}"
        if packet.is_corrupt:
            return "the demuxer flagged a packet corrupt (data lost in transport)"
        if packet.dts is None or not packet.size:
            return ""
        last, self._last_dts = self._last_dts, packet.dts
        if last is None:
            return ""
        step = (packet.dts - last) * self.time_base
        if step <= 0:
            return "timestamps go back"
        if step > 1.5 * self.frame_s:
            missing = round(step / self.frame_s) - 1
            return f"{missing} picture{'s' * (missing != 1)} missing (timestamps jump by {step:.3f} s)"
        return ""

    def _skip_to_keyframe(self, packets: Iterator, held) -> Iterator[Event]:
        """Drop packets up to the next keyframe (``held`` first: the packet that showed the
        damage) and return it, or None at the end of the stream."""
        skipped = 0  # pictures dropped: the time line of a stream without timestamps counts them
        for packet in itertools.chain([held] if held is not None else [], packets):
            if not packet.size:
                continue
            if self._is_keyframe(packet):
                self._floor_s = self._keyframe_time(packet, skipped)
                if self.num_damaged:
                    yield Resync(self._floor_s)
                return packet
            skipped += 1
            if self._started:
                yield Skipping(self._packet_time(packet, skipped))
        return None

    def _is_keyframe(self, packet) -> bool:
        if packet.is_keyframe:
            return True
        try:
            info, _ = h264.picture_info(h264.iter_nals(packet, self.decoder._length_size))
        except h264.BitstreamError:
            return False
        return info is not None and info.is_idr

    def _keyframe_time(self, keyframe, skipped: int) -> float:
        """The display time of a keyframe decoding starts at, ``skipped`` pictures after the last
        frame given. The first one is time 0; one whose timestamp is not after the last frame
        (timestamps went back, or wrapped) continues the time line a frame later."""
        ts = self._ts(keyframe)
        if not self._started:
            self._started, self._t0 = True, ts
            return 0.0
        time_s = self._packet_time(keyframe, skipped + 1)
        if time_s <= self._last_s:
            self._offset_s += self._last_s + self.frame_s - time_s
            time_s = self._last_s + self.frame_s
        if ts is None or self._t0 is None:  # frames without timestamps follow on from the keyframe
            self._last_s = time_s - self.frame_s
        return time_s

    def _packet_time(self, packet, num_after: int) -> float:
        """A packet's display time: its timestamp's, or (none) ``num_after`` frames after the last."""
        ts = self._ts(packet)
        if ts is None or self._t0 is None:
            return self._last_s + num_after * self.frame_s
        return (ts - self._t0) * self.time_base + self._offset_s

    def _frame_time(self, field: FrameField) -> float:
        ts = self._ts(field)
        if ts is None or self._t0 is None:
            return self._last_s + self.frame_s
        return (ts - self._t0) * self.time_base + self._offset_s

    def _ts(self, item) -> int | None:
        """A packet's or frame's timestamp (pts, else dts); None in a stream without timestamps,
        whose pts are display-order keys (``poc.Timestamper``), no time."""
        if self._stamper.untimed:
            return None
        return item.pts if item.pts is not None else getattr(item, "dts", None)

    def _timed(self, field: FrameField) -> TimedFrame | None:
        """The frame with its time; None for one shown before the keyframe the segment started at
        (a leading picture of an open GOP: its references are gone) or not after the last one."""
        time_s = self._frame_time(field)
        if time_s < self._floor_s or time_s <= self._last_s:
            return None
        self._last_s = time_s
        self._recent.append((time_s, field.decode_index))
        self._b_run = self._b_run + 1 if field.frame_type == "B" else 0
        self.max_b_run = max(self.max_b_run, self._b_run)
        return TimedFrame(time_s, field)

    def _packets(self) -> Iterator[av.Packet]:
        """The stream's packets as they arrive, the decoder's flush packet last. A demuxer error
        is logged and reading goes on (FFmpeg resynchronises on the container's own markers);
        past ``_MAX_DEMUX_ERRORS`` in a row the stream ends."""
        errors = 0
        while errors < _MAX_DEMUX_ERRORS:
            try:
                for packet in self._stamper.stamp(self.decoder.container.demux(self.stream)):
                    errors = 0
                    self.num_packets += bool(packet.size)
                    yield packet
                return
            except av.error.FFmpegError as exc:
                errors += 1
                log.warning("%s: the demuxer failed after %d packets (%s)", self.name, self.num_packets,
                            ffmpeg_reason(exc))
        log.warning("%s: the stream ends: the demuxer failed %d times in a row", self.name, errors)
