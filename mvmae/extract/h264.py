"""Just enough H.264 bitstream parsing for mvmae: NAL unit headers, the SPS and slice types.

FFmpeg's exported motion vectors do not say which reference picture a block used, and PyAV does
not say which decoded pictures are references. Both answers are in the bitstream and cost a few
bytes per packet to read, far less than decoding:

- ``nal_ref_idc`` of a picture's slices says whether it is kept as a reference (this is how B
  pictures used as references by x264's b-pyramid are told apart from disposable ones);
- ``nal_unit_type`` 5 marks an IDR picture, which empties the decoded picture buffer (DPB);
- the SPS field ``max_num_ref_frames`` bounds the DPB (the sliding window of candidate references);
- ``slice_type`` (the second field of every slice header) gives I/P/B without decoding.

Both packet framings are handled: length-prefixed (``avcC``, as in MP4/MKV) and Annex B start codes
(as in MPEG-TS or raw ``.h264``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

NAL_SLICE = 1
NAL_IDR = 5
NAL_SPS = 7
MAX_REF_FRAMES = 16  # the largest DPB H.264 allows (max_num_ref_frames <= 16)

# slice_type % 5 -> picture type letter (SP and SI slices count as P and I).
_SLICE_TYPE_LETTER = {0: "P", 1: "B", 2: "I", 3: "P", 4: "I"}

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling matrices.
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}

PROFILE_NAMES = {
    66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High 10",
    122: "High 4:2:2", 244: "High 4:4:4 Predictive", 44: "CAVLC 4:4:4 Intra",
}


class BitstreamError(ValueError):
    """The H.264 bitstream does not parse (truncated or not H.264)."""


@dataclass(frozen=True)
class OrderParams:
    """The SPS fields that place a picture in display order (its picture order count, POC)."""

    log2_max_frame_num: int
    poc_type: int  # 0: the slice header carries the POC's low bits; 2: display order is decode order
    log2_max_poc_lsb: int  # poc_type 0 only (else 0)
    frame_mbs_only: bool
    separate_colour_plane: bool


@dataclass(frozen=True)
class SeqParams:
    """The few SPS fields mvmae needs (``order``: None when the SPS ends before them)."""

    profile_idc: int
    level_idc: int
    max_num_ref_frames: int
    order: OrderParams | None = None

    @property
    def profile_name(self) -> str:
        return PROFILE_NAMES.get(self.profile_idc, f"profile {self.profile_idc}")


@dataclass(frozen=True)
class PictureInfo:
    """What the first slice of one access unit (packet) says about its picture."""

    picture_type: str  # "I", "P" or "B"
    is_reference: bool  # nal_ref_idc != 0: kept in the DPB for later pictures
    is_idr: bool  # instantaneous decoder refresh: the DPB is emptied before it


class _BitReader:
    """Reads big-endian bits and Exp-Golomb codes from an RBSP (emulation bytes removed)."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._num_bits = len(data) * 8
        self._pos = 0

    def bits(self, n: int) -> int:
        if self._pos + n > self._num_bits:
            raise BitstreamError("read past the end of a NAL unit")
        self._pos += n
        return (self._value >> (self._num_bits - self._pos)) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise BitstreamError("invalid Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def unescape_rbsp(payload: bytes) -> bytes:
    """Remove emulation-prevention bytes (``00 00 03`` -> ``00 00``) from a NAL payload."""
    return payload.replace(b"\x00\x00\x03", b"\x00\x00") if b"\x00\x00\x03" in payload else payload


def parse_sps(nal: bytes) -> SeqParams:
    """Parse a sequence parameter set NAL unit (header byte included) up to max_num_ref_frames."""
    r = _BitReader(unescape_rbsp(nal[1:]))  # all of it: scaling matrices can make it long
    profile_idc = r.bits(8)
    r.bits(8)  # constraint flags
    level_idc = r.bits(8)
    r.ue()  # seq_parameter_set_id
    separate_colour_plane = False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = bool(r.bits(1))
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bits(1)  # qpprime_y_zero_transform_bypass_flag
        if r.bits(1):  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format_idc == 3 else 8):
                if r.bits(1):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    log2_max_frame_num = r.ue() + 4
    poc_type = r.ue()
    log2_max_poc_lsb = 0
    if poc_type == 0:
        log2_max_poc_lsb = r.ue() + 4
    elif poc_type == 1:
        r.bits(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    max_num_ref_frames = r.ue()
    try:  # a truncated SPS still gives the fields above
        r.bits(1)  # gaps_in_frame_num_value_allowed_flag
        r.ue()  # pic_width_in_mbs_minus1
        r.ue()  # pic_height_in_map_units_minus1
        order = OrderParams(log2_max_frame_num, poc_type, log2_max_poc_lsb, bool(r.bits(1)), separate_colour_plane)
    except BitstreamError:
        order = None
    return SeqParams(profile_idc, level_idc, max_num_ref_frames, order)


def first_sps(nals: list[bytes]) -> SeqParams | None:
    """The first of the SPS NAL units that parses; None if none does (a damaged header: the
    decoder still decides whether the pictures decode)."""
    for nal in nals:
        try:
            return parse_sps(nal)
        except BitstreamError:
            continue
    return None


def num_candidate_refs(sps: SeqParams | None) -> int:
    """Reference frames a block may predict from: the SPS's max_num_ref_frames within H.264's
    bound (a damaged SPS can say billions), or the bound itself when no SPS is known."""
    if sps is None or not sps.max_num_ref_frames:
        return MAX_REF_FRAMES
    return min(sps.max_num_ref_frames, MAX_REF_FRAMES)


def _skip_scaling_list(r: _BitReader, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + r.se() + 256) % 256
        last = nxt if nxt != 0 else last


def parse_avcc(extradata: bytes) -> tuple[int, list[bytes]]:
    """Read an ``avcC`` record: (NAL length-prefix size in bytes, SPS NAL units)."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise BitstreamError("extradata is not an avcC record")
    length_size = (extradata[4] & 3) + 1
    num_sps = extradata[5] & 0x1F
    pos, sps = 6, []
    for _ in range(num_sps):
        n = int.from_bytes(extradata[pos:pos + 2], "big")
        sps.append(bytes(extradata[pos + 2:pos + 2 + n]))
        pos += 2 + n
    return length_size, sps


def iter_nals(data: bytes | memoryview, length_size: int | None) -> Iterator[bytes]:
    """Yield the NAL units (header byte first) of one packet.

    ``length_size`` is the avcC prefix size; ``None`` means Annex B start codes.
    """
    data = bytes(data)
    if length_size is None:
        yield from _iter_annexb(data)
        return
    pos, end = 0, len(data)
    while pos + length_size <= end:
        n = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > end:
            return
        yield data[pos:pos + n]
        pos += n


def _iter_annexb(data: bytes) -> Iterator[bytes]:
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    for k, s in enumerate(starts):
        e = starts[k + 1] - 3 if k + 1 < len(starts) else len(data)
        nal = data[s:e].rstrip(b"\x00")
        if nal:
            yield nal


def picture_info(nals: Iterator[bytes]) -> tuple[PictureInfo | None, list[bytes]]:
    """Find the first slice of a packet: (its PictureInfo or None, SPS NAL units seen in-band)."""
    sps = []
    for nal in nals:
        nal_type = nal[0] & 0x1F
        if nal_type == NAL_SPS:
            sps.append(nal)
        elif nal_type in (NAL_SLICE, NAL_IDR) and len(nal) > 1:
            r = _BitReader(unescape_rbsp(nal[1:12]))
            r.ue()  # first_mb_in_slice
            letter = _SLICE_TYPE_LETTER.get(r.ue() % 5)
            if letter is None:
                raise BitstreamError("invalid slice_type")
            info = PictureInfo(letter, (nal[0] >> 5) & 3 != 0, nal_type == NAL_IDR)
            return info, sps
    return None, sps


def slice_order(nals: Iterator[bytes], order: OrderParams) -> tuple[PictureInfo, int, int | None] | None:
    """The first slice of a packet: (its PictureInfo, frame_num, pic_order_cnt_lsb or None when
    the POC is not coded: poc_type != 0, or a field picture), or None without a slice."""
    for nal in nals:
        nal_type = nal[0] & 0x1F
        if nal_type not in (NAL_SLICE, NAL_IDR) or len(nal) < 2:
            continue
        r = _BitReader(unescape_rbsp(nal[1:24]))  # the header fields up to the POC fit in 23 bytes
        r.ue()  # first_mb_in_slice
        letter = _SLICE_TYPE_LETTER.get(r.ue() % 5)
        if letter is None:
            raise BitstreamError("invalid slice_type")
        r.ue()  # pic_parameter_set_id
        if order.separate_colour_plane:
            r.bits(2)  # colour_plane_id
        frame_num = r.bits(order.log2_max_frame_num)
        field = not order.frame_mbs_only and r.bits(1)  # field_pic_flag (then bottom_field_flag)
        if field:
            r.bits(1)
        if nal_type == NAL_IDR:
            r.ue()  # idr_pic_id
        info = PictureInfo(letter, (nal[0] >> 5) & 3 != 0, nal_type == NAL_IDR)
        poc_lsb = r.bits(order.log2_max_poc_lsb) if order.poc_type == 0 and not field else None
        return info, frame_num, poc_lsb
    return None
