"""Display order of the pictures of an H.264 stream without timestamps (an elementary stream).

The extractor ranks pictures in display order by their timestamps (``decoder._FrameStream``): the
display distance to a reference is what turns a vector into a velocity. FFmpeg's raw H.264
demuxer gives packets no timestamp, and ranking them in decode order would put each B-frame
after the anchor it precedes. The display order is in the bitstream: each picture's picture order
count (POC), rebuilt here from the slice headers as H.264 (8.2.1) does. :class:`DisplayOrder`
gives each packet a key that grows in display order, to set as its timestamp before decoding
(FFmpeg hands a packet's timestamp to the frame decoded from it).

POC type 0 (B-frames: x264's choice then) is read from ``pic_order_cnt_lsb``; type 2 is decode
order. Type 1 (rare) and field pictures fall back to decode order.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from mvmae.extract import h264

_PERIOD = 1 << 32  # keys of one IDR period: POC + 2^31 below this


class DisplayOrder:
    """Keys in display order for the packets of one stream, in decode order: ``key(packet)``.

    ``length_size``: the NAL framing (``container.nal_framing``); ``sps``: the SPS of the
    extradata (None: in-band SPS only)."""

    def __init__(self, length_size: int | None, sps: h264.SeqParams | None) -> None:
        self.length_size = length_size
        self.order = sps.order if sps else None
        self.period = 0  # IDR periods so far
        self.count = 0  # pictures of this period, in decode order
        self.prev_msb = self.prev_lsb = 0  # of the last reference picture

    def key(self, packet) -> int:
        """The display key of ``packet`` (one picture), from its slice header; a packet that does
        not parse is placed after the last one in decode order."""
        nals = list(h264.iter_nals(packet, self.length_size))
        for nal in nals:
            if nal[0] & 0x1F == h264.NAL_SPS:
                sps = h264.first_sps([nal])
                self.order = sps.order if sps and sps.order else self.order
        parsed = None
        if self.order is not None:
            try:
                parsed = h264.slice_order(iter(nals), self.order)
            except h264.BitstreamError:
                parsed = None
        if parsed is not None and parsed[0].is_idr:
            self.period, self.count, self.prev_msb, self.prev_lsb = self.period + 1, 0, 0, 0
        self.count += 1
        if parsed is None or parsed[2] is None:
            return self.period * _PERIOD + self.count  # decode order
        info, _, lsb = parsed
        max_lsb = 1 << self.order.log2_max_poc_lsb
        if lsb < self.prev_lsb and self.prev_lsb - lsb >= max_lsb // 2:
            msb = self.prev_msb + max_lsb
        elif lsb > self.prev_lsb and lsb - self.prev_lsb > max_lsb // 2:
            msb = self.prev_msb - max_lsb
        else:
            msb = self.prev_msb
        if info.is_reference:
            self.prev_msb, self.prev_lsb = msb, lsb
        return self.period * _PERIOD + (1 << 31) + msb + lsb


class Timestamper:
    """Packets of a stream in decode order as they come, or, when the stream carries no
    timestamps (its first picture's packet has neither pts nor dts), each picture's packet with
    its :class:`DisplayOrder` key as pts: ``stamp(packets)``. ``untimed``: None until the first
    picture, then whether the keys were given (they order pictures; they are no time)."""

    def __init__(self, length_size: int | None, sps: h264.SeqParams | None) -> None:
        self.order = DisplayOrder(length_size, sps)
        self.untimed: bool | None = None

    def stamp(self, packets: Iterable) -> Iterator:
        for packet in packets:
            if packet.size:
                if self.untimed is None:
                    self.untimed = packet.pts is None and packet.dts is None
                if self.untimed:
                    packet.pts = self.order.key(packet)
            yield packet
