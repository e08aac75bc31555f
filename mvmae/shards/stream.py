"""Shard URLs as streams of raw samples: the one reader of shards, for training and inspection.

``ShardReader(url, config)`` opens a shard (``fetch.open_shard``: local files, ``file:``,
``http(s)://`` through curl, ``pipe:``; every wait bounded by :class:`ReadConfig`), follows its
tar structure header by header and yields its samples ``{'__key__', '__url__', ext: bytes}``.
A read that fails (HTTP error, dropped or stalled connection, damaged tar) is retried with backoff
unless the shard is a local file (its bytes will not change); a retry re-reads the shard from the
start and skips the samples already delivered, so each is yielded once. Past the retries a
:class:`ShardReadError` names the URL, the last sample delivered and the reason.
``read_shards`` is the webdataset stage of the training reader (``reader.py``); ``inspect.py``
uses ``ShardReader`` directly.

The tar is parsed here rather than by ``tarfile``, whose streaming mode silently stops at a
garbage, zeroed or truncated header past the first member and would make a damaged shard look
like a short one. A shard must end with an end-of-archive block followed by zeros only; anything
else is damage. A sample whose members were all read (``sample.MEMBERS``) before the damage is
still delivered. gzip, bzip2 and xz compressed tars are decompressed on the way.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import lzma
import re
import tarfile
import time
import zlib
from typing import BinaryIO, Callable, Iterable, Iterator

from mvmae.shards.fetch import ReadConfig, expand_urls, local_path, open_shard
from mvmae.shards.sample import MEMBERS

__all__ = ["ReadConfig", "ShardError", "ShardReadError", "ShardReader", "expand_urls", "local_path",
           "read_shards"]

log = logging.getLogger(__name__)

Handler = Callable[[Exception], bool]
BLOCK = 512  # tar block size
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
GNU_TYPES = tuple(tarfile.GNU_TYPES)  # header types whose prefix field means something else
DECOMPRESSORS = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
                 (b"BZh", lambda f: bz2.BZ2File(f, "rb")), (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")))
DAMAGE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)  # from a decompressor
TAIL_CHUNK = 1 << 20  # bytes per read of what follows the end-of-archive block
_KEY_EXT = re.compile(r"^((?:.*/)?[^./]+)\.([^/]*)$")  # key: up to the first dot of the file name


def reraise_exception(exc: Exception) -> bool:
    """The loud handler (webdataset's ``reraise_exception``, without importing webdataset)."""
    raise exc


def split_member_name(name: str) -> tuple[str | None, str]:
    """``'dir/clip_3.mv.zst'`` -> ``('dir/clip_3', 'mv.zst')``; (None, '') for a name without an
    extension (webdataset's key convention; extensions lowercased)."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


class ShardError(ValueError):
    """A shard that cannot be read, or a sample that is not in it. ``key``: the sample concerned,
    or for a shard that could not be read to its end the last sample delivered (None: none was)."""

    def __init__(self, url: str, key: str | None, reason: str) -> None:
        super().__init__(f"{url} {key or '-'}: {reason}")
        self.url, self.key, self.reason = url, key, reason


class ShardReadError(ShardError, OSError):
    """A shard could not be read to its end, after the retries (an OSError, as webdataset's
    handlers and :class:`reader.SkipCounter` expect of a failed shard)."""


class _TarDamage(Exception):
    """The bytes stop being a tar (the reason says where)."""


class _TransferError(Exception):
    """The shard's byte stream itself failed (a command's status, a timeout, an I/O error)."""


class _AttemptFailed(Exception):
    """One read of a shard failed; the message is the reason."""


class _Counted:
    """A stream counting the bytes read from it, ``head`` (bytes already read) served first.
    ``transfer``: its errors become :class:`_TransferError` (the raw stream of a shard)."""

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
                raise _TransferError(str(exc)) from exc
        self.num_bytes += len(data)
        return data


def _tar_stream(shard: _Counted) -> _Counted:
    """The uncompressed tar bytes of a shard stream, counted from 0."""
    head = shard.read(BLOCK)
    replay = _Counted(shard, head)
    for magic, opener in DECOMPRESSORS:
        if head.startswith(magic):
            return _Counted(opener(replay))
    return replay


def _after(member: str | None) -> str:
    return f", after member {member}" if member else ""


def _check_end(tar: _Counted, end: int, member: str | None) -> None:
    """After the end-of-archive block (at byte ``end``) only zeros may follow."""
    while chunk := tar.read(TAIL_CHUNK):
        if any(chunk):
            raise _TarDamage(f"data after the end-of-archive block at byte {end} (a zeroed header, "
                             f"or tars concatenated){_after(member)}")


def _pax_fields(data: bytes) -> dict[str, str]:
    """``path`` and ``size`` of a pax extended header ('<len> <key>=<value>\\n' records)."""
    fields, pos = {}, 0
    while pos < len(data):
        length_text, _, rest = data[pos:].partition(b" ")
        if not length_text.isdigit() or int(length_text) == 0:
            raise _TarDamage("invalid pax header")
        key, _, value = rest[:int(length_text) - len(length_text) - 2].partition(b"=")
        fields[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += int(length_text)
    if not fields.get("size", "0").isdigit():
        raise _TarDamage(f"invalid pax header (size {fields['size']!r})")
    return {k: v for k, v in fields.items() if k in ("path", "size")}


def _ustar_header(block: bytes) -> tuple[str, int, bytes] | None:
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


def _tar_members(tar: _Counted) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular member of an uncompressed tar stream, in order.

    Raises :class:`_TarDamage` naming the byte offset and the last member read where the bytes
    stop being a tar: an invalid header (checksum), a header or data cut short, no end-of-archive
    block, data after it. Directories, links and the like are skipped; pax ``path``/``size`` and
    GNU long names are applied to the next member.
    """
    member, pending = None, {}
    while True:
        offset = tar.num_bytes
        block = tar.read(BLOCK)
        if len(block) < BLOCK:
            if offset == 0 and not block:
                raise _TarDamage("empty file (not a tar)")
            where = f"a header is cut at byte {offset + len(block)}" if block else \
                f"no end-of-archive block at byte {offset}"
            raise _TarDamage(f"truncated tar: {where}{_after(member)}")
        if not any(block):
            _check_end(tar, offset, member)
            return
        header = _ustar_header(block)
        if header is None:  # not a plain ustar header, or a bad checksum: tarfile decides
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise _TarDamage(f"invalid tar header at byte {offset} ({exc}){_after(member)}") from None
            header = info.name, info.size, info.type
        name, size = pending.get("path", header[0]), int(pending.get("size", header[1]))
        data = tar.read(size)
        if len(data) < size:
            raise _TarDamage(f"truncated tar: the data of member {name} ends {size - len(data)} bytes short")
        tar.read(-size % BLOCK)  # padding to whole blocks (a cut here shows at the next header)
        if header[2] == tarfile.XHDTYPE:
            pending = _pax_fields(data)
        elif header[2] == tarfile.GNUTYPE_LONGNAME:
            pending = {**pending, "path": data.rstrip(b"\0").decode("utf-8", "surrogateescape")}
        else:
            pending, member = {}, name
            if header[2] in REGULAR:
                yield name, data


def _group_samples(members: Iterable[tuple[str, bytes]], url: str) -> Iterator[dict]:
    """Members -> samples (consecutive members sharing a key). When reading fails, the sample in
    progress is yielded first if all its members were read."""
    sample = None
    try:
        for name, data in members:
            key, ext = split_member_name(name)
            if key is None:
                continue
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if ext in sample:
                raise _TarDamage(f"member {name} appears twice")
            sample[ext] = data
    except (_TarDamage, _TransferError, *DAMAGE_ERRORS):
        if sample is not None and sample.keys() >= set(MEMBERS):
            yield sample
        raise
    if sample is not None:
        yield sample


class ShardReader:
    """The raw samples of one shard, ``{'__key__': key, '__url__': url, ext: bytes, ...}``, each
    once, a failed read of a remote shard retried (``config.retries``, backoff from
    ``retry_delay_s``) from the start, the samples already delivered skipped.

    Raises :class:`ShardReadError` (URL, last sample delivered, reason) when the shard cannot be
    read to its end. ``on_retry()`` is called before each retry. After a complete iteration
    ``num_bytes`` is the size of the shard.
    """

    def __init__(self, url: str, config: ReadConfig | None = None,
                 on_retry: Callable[[], None] | None = None) -> None:
        self.url, self.config, self.on_retry = url, config or ReadConfig(), on_retry
        self.num_bytes = 0
        self._delivered: list[str] = []  # keys, in order, of the samples yielded so far

    def __iter__(self) -> Iterator[dict]:
        self._delivered = delivered = []
        reason = ""
        delays = [] if local_path(self.url) is not None else self.config.retry_delays()
        for attempt in range(len(delays) + 1):
            if attempt:
                log.warning("%s: %s; retry %d of %d in %.3g s", self.url, reason, attempt, len(delays),
                            delays[attempt - 1])
                if self.on_retry is not None:
                    self.on_retry()
                time.sleep(delays[attempt - 1])
            try:
                with contextlib.closing(self._read_once()) as samples:
                    for i, sample in enumerate(samples):
                        if i < len(delivered):  # a retry: this one was delivered already
                            self._check_same(i, sample["__key__"], delivered[i])
                            continue
                        delivered.append(sample["__key__"])
                        yield sample
                return
            except _AttemptFailed as exc:
                reason = str(exc)
        tries = f" ({len(delays) + 1} attempts)" if delays else ""
        raise ShardReadError(self.url, self._last_key(), f"{reason}{tries}")

    def _last_key(self) -> str | None:
        """The last sample delivered (None: none yet)."""
        return self._delivered[-1] if self._delivered else None

    def _check_same(self, index: int, key: str, delivered: str) -> None:
        if key != delivered:
            raise ShardReadError(self.url, self._last_key(), f"the shard changed between reads: sample "
                                                             f"{index} is {key!r}, was {delivered!r}")

    def _read_once(self) -> Iterator[dict]:
        """One read from the start; a failure raises :class:`_AttemptFailed` with the reason."""
        try:
            raw = open_shard(self.url, self.config)
        except (OSError, ValueError) as exc:
            raise _AttemptFailed(f"cannot open: {exc}") from exc
        shard = _Counted(raw, transfer=True)
        try:
            yield from _group_samples(_tar_members(_tar_stream(shard)), self.url)
            try:
                raw.close()  # webdataset's own pipes (other schemes) check the command's status here
            except OSError as exc:
                raise _TransferError(str(exc)) from exc
            self.num_bytes = shard.num_bytes
        except _TransferError as exc:
            raise _AttemptFailed(f"transfer failed{self._after()}: {exc}") from exc
        except (_TarDamage, *DAMAGE_ERRORS) as exc:
            raise _AttemptFailed(f"tar unreadable{self._after()}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                raw.close()

    def _after(self) -> str:
        return " after this sample" if self._delivered else ""


def read_shards(src: Iterable[dict], config: ReadConfig | None = None,
                handler: Handler = reraise_exception) -> Iterator[dict]:
    """The webdataset stage ``{'url': ...}`` items -> raw samples, each shard through a
    :class:`ShardReader`. A shard that cannot be read to its end goes to ``handler`` as a
    :class:`ShardReadError` (True: next shard, False: stop) after the samples read before the
    failure. A handler's ``count_shard()`` is called per shard, ``count_retry()`` per retry
    (:class:`reader.SkipCounter` has both)."""
    config = config or ReadConfig()
    on_retry = getattr(handler, "count_retry", None)
    for item in src:
        if hasattr(handler, "count_shard"):
            handler.count_shard()
        try:
            yield from ShardReader(item["url"], config, on_retry)
        except ShardReadError as exc:
            if not handler(exc):
                return
