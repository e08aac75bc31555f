"""A shard's bytes as tar members, then samples: the parsing half of ``stream.py``.

The tar is parsed here rather than by ``tarfile``, whose streaming mode silently stops at a
garbage, zeroed or truncated header past the first member and would make a damaged shard look
like a short one. A shard must end with an end-of-archive block followed by zeros only.

A damaged header (bad checksum, garbage, a zeroed block where a header should be) is resynced:
the blocks after it are scanned for the next valid header, and reading goes on from there, so
only the sample the damage hit is lost (:func:`group_samples` drops a sample missing members on
either side of the damage). The damage is then reported once the shard has been read to its
end (:class:`Resynced`). A cut (a header or member short, no end-of-archive block) or data after
the end-of-archive block is not resynced: nothing follows to resync to. gzip, bzip2 and xz
compressed tars are decompressed on the way.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

from mvmae.shards.sample import MEMBERS

BLOCK = 512  # tar block size
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
GNU_TYPES = tuple(tarfile.GNU_TYPES)  # header types whose prefix field means something else
DECOMPRESSORS = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
                 (b"BZh", lambda f: bz2.BZ2File(f, "rb")), (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")))
DAMAGE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)  # from a decompressor
TAIL_CHUNK = 1 << 20  # bytes per read of what follows the end-of-archive block
_KEY_EXT = re.compile(r"^((?:.*/)?[^./]+)\.([^/]*)$")  # key: up to the first dot of the file name


def split_member_name(name: str) -> tuple[str | None, str]:
    """``'dir/clip_3.mv.zst'`` -> ``('dir/clip_3', 'mv.zst')``; (None, '') for a name without an
    extension (webdataset's key convention; extensions lowercased)."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


class TarDamage(Exception):
    """The bytes stop being a tar and nothing can be resynced (the reason says where)."""


class TransferError(Exception):
    """The shard's byte stream itself failed (a command's status, a timeout, an I/O error)."""


class Resynced(Exception):
    """The shard was read to its end past damaged headers. ``reasons``: one per damage (where,
    what, where reading resumed, which sample was lost); ``lost``: keys of the samples lost."""

    def __init__(self, reasons: list[str], lost: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons, self.lost = reasons, lost


@dataclass
class Resync:
    """What :func:`tar_members` yields where it skipped damage: the reason, then reading resumed."""

    reason: str


class Counted:
    """A stream counting the bytes read from it, ``head`` (bytes already read) served first.
    ``transfer``: its errors become :class:`TransferError` (the raw stream of a shard)."""

    def __init__(self, raw: BinaryIO, head: bytes = b"", transfer: bool = False) -> None:
        self.raw, self.head, self.transfer, self.num_bytes = raw, head, transfer, 0

    def read(self, size: int = -1) -> bytes:
        if self.head:
            cut = len(self.head) if size < 0 else min(size, len(self.head))
            data, self.head = self.head[:cut], self.head[cut:]
        else:
            try:
                data = self.raw.read(size)
            except (OSError, ValueError) as exc:
                if not self.transfer:
                    raise
                raise TransferError(str(exc)) from exc
        self.num_bytes += len(data)
        return data


def tar_stream(shard: Counted) -> Counted:
    """The uncompressed tar bytes of a shard stream, counted from 0."""
    head = shard.read(BLOCK)
    replay = Counted(shard, head)
    for magic, opener in DECOMPRESSORS:
        if head.startswith(magic):
            return Counted(opener(replay))
    return replay


def _after(member: str | None) -> str:
    return f", after member {member}" if member else ""


def _check_end(tar: Counted, end: int, member: str | None) -> None:
    """After the end-of-archive blocks (from byte ``end``) only zeros may follow."""
    while chunk := tar.read(TAIL_CHUNK):
        if any(chunk):
            raise TarDamage(f"data after the end-of-archive block at byte {end} (tars concatenated?)"
                            f"{_after(member)}")


def _pax_fields(data: bytes) -> dict[str, str]:
    """``path`` and ``size`` of a pax extended header ('<len> <key>=<value>\\n' records)."""
    fields, pos = {}, 0
    while pos < len(data):
        length_text, _, rest = data[pos:].partition(b" ")
        if not length_text.isdigit() or int(length_text) == 0:
            raise TarDamage("invalid pax header")
        key, _, value = rest[:int(length_text) - len(length_text) - 2].partition(b"=")
        fields[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += int(length_text)
    if not fields.get("size", "0").isdigit():
        raise TarDamage(f"invalid pax header (size {fields['size']!r})")
    return {k: v for k, v in fields.items() if k in ("path", "size")}


def ustar_header(block: bytes) -> tuple[str, int, bytes] | None:
    """(name, size, type) of a POSIX ustar header block whose checksum holds (what mvmae and
    most tools write), parsed in a few microseconds; None for anything else (GNU or v7 headers,
    base-256 sizes, a bad checksum), which ``tarfile.TarInfo.frombuf`` then parses or refuses
    with its reason. The same fields as frombuf's for the blocks it accepts (tests compare)."""
    if block[257:265] != b"ustar\x0000":
        return None
    try:
        size = int(block[124:136].split(b"\0", 1)[0] or b"0", 8)
        checksum = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if checksum != sum(block) - sum(block[148:156]) + 8 * 32:  # the checksum field counts as spaces
        return None
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    kind = block[156:157]
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix and kind not in GNU_TYPES:
        name = f"{prefix.decode('utf-8', 'surrogateescape')}/{name}"
    return name, size, kind


def _parse_header(block: bytes) -> tuple[tuple[str, int, bytes] | None, str]:
    """((name, size, type), '') of a valid header block, else (None, why it is not one)."""
    header = ustar_header(block)
    if header is not None:
        return header, ""
    try:  # not a plain ustar header, or a bad checksum: tarfile decides
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        return None, str(exc)
    return (info.name, info.size, info.type), ""


def _is_header(block: bytes) -> bool:
    return len(block) == BLOCK and any(block) and _parse_header(block)[0] is not None


def _next_header(tar: Counted, member: str | None) -> tuple[int, bytes] | None:
    """Scan block by block for the next valid header: (its offset, the block), or None at the
    end-of-archive blocks (zeros to the end). Raises :class:`TarDamage` when the bytes end
    without an end-of-archive block."""
    num_zeros = 0
    while True:
        offset, block = tar.num_bytes, tar.read(BLOCK)
        if len(block) < BLOCK:
            if num_zeros and not block:
                return None
            raise TarDamage(f"truncated tar: no end-of-archive block at byte {offset}{_after(member)}")
        if _is_header(block):
            return offset, block
        num_zeros = 0 if any(block) else num_zeros + 1


def _skip_damage(tar: Counted, offset: int, block: bytes, why: str,
                 member: str | None) -> tuple[str, tuple[int, bytes] | None] | None:
    """A block that is not a header at ``offset``: None if it starts the end-of-archive blocks
    (zeros follow; data after them raises :class:`TarDamage`), else (the damage, the next valid
    header's (offset, block) or None when none follows)."""
    if any(block):
        reason = f"invalid tar header at byte {offset} ({why}){_after(member)}"
        return reason, _next_header(tar, member)
    second = tar.read(BLOCK)
    if not any(second):  # the end-of-archive blocks (a single one is tolerated)
        _check_end(tar, offset, member)
        return None
    reason = f"a zeroed block at byte {offset} where a header should be{_after(member)}"
    return reason, (offset + BLOCK, second) if _is_header(second) else _next_header(tar, member)


def tar_members(tar: Counted) -> Iterator[tuple[str, bytes] | Resync]:
    """(name, data) of each regular member of an uncompressed tar stream, in order, and a
    :class:`Resync` where a damaged header was skipped (reading resumed at the next valid one).

    Raises :class:`TarDamage` naming the byte offset and the last member read where the bytes
    stop being a tar: a header or data cut short, no end-of-archive block, data after it.
    Directories, links and the like are skipped; pax ``path``/``size`` and GNU long names are
    applied to the next member.
    """
    member, pending = None, {}
    offset, block = 0, tar.read(BLOCK)
    if not block:
        raise TarDamage("empty file (not a tar)")
    while True:
        if len(block) < BLOCK:
            where = f"a header is cut at byte {offset + len(block)}" if block else \
                f"no end-of-archive block at byte {offset}"
            raise TarDamage(f"truncated tar: {where}{_after(member)}")
        header, why = _parse_header(block) if any(block) else (None, "")
        if header is None:
            damage = _skip_damage(tar, offset, block, why, member)
            if damage is None:
                return
            reason, found = damage
            pending = {}
            yield Resync(f"{reason}; resynced at byte {found[0]}" if found else f"{reason}; no header after it")
            if found is None:
                return
            offset, block = found
            continue
        name, size = pending.get("path", header[0]), int(pending.get("size", header[1]))
        data = tar.read(size)
        if len(data) < size:
            raise TarDamage(f"truncated tar: the data of member {name} ends {size - len(data)} bytes short")
        tar.read(-size % BLOCK)  # padding to whole blocks (a cut here shows at the next header)
        if header[2] == tarfile.XHDTYPE:
            pending = _pax_fields(data)
        elif header[2] == tarfile.GNUTYPE_LONGNAME:
            pending = {**pending, "path": data.rstrip(b"\0").decode("utf-8", "surrogateescape")}
        else:
            pending, member = {}, name
            if header[2] in REGULAR:
                yield name, data
        offset, block = tar.num_bytes, tar.read(BLOCK)


def _whole(sample: dict) -> bool:
    return sample.keys() >= set(MEMBERS)


def group_samples(members: Iterable[tuple[str, bytes] | Resync], url: str) -> Iterator[dict]:
    """Members -> samples (consecutive members sharing a key), each ``{'__key__', '__url__',
    ext: bytes}``. When reading fails, the sample in progress is yielded first if all its members
    were read. Around a :class:`Resync`, a sample missing members (the one the damage hit: the
    sample in progress, or the first one after) is dropped; once the members end, the skipped
    damage raises :class:`Resynced` naming the samples lost."""
    sample, reasons, lost = None, [], []
    after_resync = suspect = False  # suspect: the sample in progress began right after a resync

    def finish() -> Iterator[dict]:
        if sample is not None:
            if _whole(sample) or not suspect:
                yield sample
            elif sample["__key__"] not in lost:
                lost.append(sample["__key__"])

    try:
        for item in members:
            if isinstance(item, Resync):
                suspect = True  # the sample in progress was hit unless it is whole
                yield from finish()
                sample, after_resync = None, True
                reasons.append(item.reason)
                continue
            key, ext = split_member_name(item[0])
            if key is None:
                continue
            if sample is None or key != sample["__key__"]:
                yield from finish()
                sample, suspect, after_resync = {"__key__": key, "__url__": url}, after_resync, False
            if ext in sample:
                raise TarDamage(f"member {item[0]} appears twice")
            sample[ext] = item[1]
    except (TarDamage, TransferError, *DAMAGE_ERRORS):
        if sample is not None and _whole(sample):
            yield sample
        raise
    yield from finish()
    if reasons:
        raise Resynced(reasons, lost)
