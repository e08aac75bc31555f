"""The tar header fast path of ``stream.py`` against ``tarfile``'s own parser, header by header."""

from __future__ import annotations

import io
import tarfile

import pytest

from mvmae.shards.tarstream import BLOCK, ustar_header as _ustar_header

NAMES = ["key.mv.zst", "a/b/key.json", "d" * 99, "dir/" * 30 + "long_key.cls", "ümlaut_ключ.txt"]


def _header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE,
            fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "target"
    return info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")[:BLOCK]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [0, 1, 511, 512, 10 ** 9])
@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE])
def test_fast_path_agrees_with_tarfile(name: str, size: int, kind: bytes) -> None:
    block = _header(name, size if kind == tarfile.REGTYPE else 0, kind)
    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    assert _ustar_header(block) == (info.name, info.size, info.type)


def test_what_the_fast_path_leaves_to_tarfile() -> None:
    """GNU headers, base-256 sizes and bad checksums are tarfile's to parse or refuse."""
    assert _ustar_header(_header("key.json", 10, fmt=tarfile.GNU_FORMAT)) is None
    huge = bytearray(_header("key.json", 1))
    huge[124:136] = b"\x80" + (2 ** 40).to_bytes(11, "big")  # base-256 size field
    assert _ustar_header(bytes(huge)) is None
    flipped = bytearray(_header("key.json", 10))
    flipped[3] ^= 0x20
    assert _ustar_header(bytes(flipped)) is None
    with pytest.raises(tarfile.InvalidHeaderError):
        tarfile.TarInfo.frombuf(bytes(flipped), "utf-8", "surrogateescape")


def test_written_shard_headers_take_the_fast_path() -> None:
    """Every header mvmae's writer (tarfile, USTAR format) produces is parsed by the fast path."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in NAMES:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    parsed = [_ustar_header(data[i * 2 * BLOCK:i * 2 * BLOCK + BLOCK]) for i in range(len(NAMES))]
    assert parsed == [(n, 3, tarfile.REGTYPE) for n in NAMES]


def test_two_damaged_headers_lose_two_samples(tmp_path) -> None:
    """Resync twice in one shard: each damaged header costs its own sample only; the shard is
    reported once, after the rest was delivered, naming both damages and both samples lost."""
    from mvmae.shards.sample import MEMBERS
    from mvmae.shards.stream import ShardReadError, ShardReader

    keys = [f"s{i}" for i in range(5)]
    buf, offsets = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in keys:
            for member in MEMBERS:
                offsets[f"{key}.{member}"] = buf.tell()
                data = bytes(range(256)) * 3  # 768 bytes: two data blocks after each header
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = bytearray(buf.getvalue())
    for name in (f"s1.{MEMBERS[1]}", f"s3.{MEMBERS[0]}"):
        data[offsets[name] + 3] ^= 0x20  # a name byte: the checksum no longer holds
    shard = tmp_path / "shard.tar"
    shard.write_bytes(bytes(data))
    got = []
    with pytest.raises(ShardReadError) as info:
        got.extend(s["__key__"] for s in ShardReader(str(shard)))
    assert got == ["s0", "s2", "s4"]
    assert info.value.key == "s1"
    assert info.value.reason.count("invalid tar header") == 2 and "2 sample(s) lost: s1, s3" in info.value.reason
    assert f"resynced at byte {offsets[f's1.{MEMBERS[2]}']}" in info.value.reason
    assert f"resynced at byte {offsets[f's3.{MEMBERS[1]}']}" in info.value.reason
