"""Shard URLs as streams of raw samples (webdataset's tar readers, with damage detected).

Shards are named by URLs, as webdataset names them: local paths (``file://`` too), brace patterns
(``train-{000000..000009}.tar``), ``http(s)://`` (fetched with curl) and ``pipe:<command>``
(the command's stdout). The tar is read with webdataset's own ``tar_file_expander`` and
``group_by_keys``; every error names the shard URL and the sample key.

Python's tarfile silently stops at a garbage or truncated header past the first member, which
would make a damaged shard look like a short one. The bytes are therefore followed through a
small tar header walker on their way to tarfile, and a stream that does not end with the
end-of-archive block (and only zeros after it) is reported as damaged, naming the last sample
read in full.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import braceexpand
from webdataset.gopen import gopen
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from mvmae.shards.sample import MEMBERS

BLOCK = 512  # tar block size
# Compressed tars (.tar.gz ...) are decompressed by tarfile; the walker cannot follow them.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class ShardError(ValueError):
    """A shard that cannot be read, or a sample that is not in it. ``key``: the sample concerned,
    or for a damaged tar the last sample read in full (None: none was)."""

    def __init__(self, url: str, key: str | None, reason: str) -> None:
        super().__init__(f"{url} {key or '-'}: {reason}")
        self.url, self.key, self.reason = url, key, reason


def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Shard URLs with brace patterns expanded, in order: ``"a-{0..2}.tar"`` -> 3 URLs."""
    if isinstance(urls, (str, Path)):
        urls = [urls]
    return [u for url in urls for u in braceexpand.braceexpand(str(url))]


def local_path(url: str) -> Path | None:
    """The file behind a local-path or ``file://`` URL; None for http, pipe: and the like."""
    parsed = urlparse(url)
    if parsed.scheme == "":
        return Path(url)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return None


class _TarWalk:
    """A read-only stream that follows the tar structure of the bytes read through it.

    It checks each header block (checksum), skips the member's data, and notes whether the
    end-of-archive block was reached: what tarfile's streaming mode does not tell its caller.
    """

    def __init__(self, raw, url: str) -> None:
        self.raw, self.url = raw, url
        self.num_bytes = 0
        self.member: str | None = None  # the member whose header was read last
        self.error: str | None = None
        self.ended = False
        self._end = 0  # offset of the end-of-archive block
        self._pending = b""  # start of a header block
        self._skip = 0  # bytes of member data (with padding) before the next header
        self._enabled: bool | None = None  # False for a compressed tar

    def __repr__(self) -> str:  # tarfile puts the stream into its messages
        return f"<shard {self.url}>"

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self._enabled is None and data:
            self._enabled = not data.startswith(COMPRESSED_MAGIC)
        if self._enabled:
            self._feed(data)
        self.num_bytes += len(data)
        return data

    def _feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and not self.error:
            if self.ended:  # only zero padding may follow; anything else went unread
                if any(data[pos:]):
                    self.error = (f"data after the end-of-archive block at byte {self._end} "
                                  f"(a zeroed header, or tars concatenated){self._after()}")
                return
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            take = min(BLOCK - len(self._pending), len(data) - pos)
            self._pending += data[pos:pos + take]
            pos += take
            if len(self._pending) == BLOCK:
                self._header(self._pending, self.num_bytes + pos - BLOCK)
                self._pending = b""

    def _header(self, block: bytes, offset: int) -> None:
        if not any(block):
            self.ended, self._end = True, offset
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            self.error = f"invalid tar header at byte {offset} ({exc}){self._after()}"
            return
        self.member = info.name
        self._skip = -(-info.size // BLOCK) * BLOCK  # data padded to whole blocks

    def _after(self) -> str:
        return f", after member {self.member}" if self.member else ""

    def finish(self) -> str | None:
        """Read what the tar reader left unread (to the end of the stream unless it is damaged);
        the structural problem of the stream, if any."""
        while not self.error and self.read(1 << 16):
            pass
        if self.error or not self._enabled or self.ended:
            return self.error
        if self._skip:
            return f"truncated tar: the data of member {self.member} ends {self._skip} bytes short"
        if self._pending:
            return f"truncated tar: a header is cut at byte {self.num_bytes}{self._after()}"
        if self.num_bytes == 0:
            return "empty file (not a tar)"
        return f"truncated tar: no end-of-archive block at byte {self.num_bytes}{self._after()}"


class _TarDamaged(Exception):
    """Raised inside the reading pipeline when the walker finds the tar damaged."""


class ShardReader:
    """The raw samples of one shard, ``{'__key__': key, '__url__': url, ext: bytes, ...}``.

    Raises :class:`ShardError` (URL, last good key, reason) when the shard cannot be opened or its
    tar is damaged; a sample in progress when the damage shows is not yielded. After a complete
    iteration ``num_bytes`` is the size of the shard.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.num_bytes = 0
        self.last_key: str | None = None

    def __iter__(self) -> Iterator[dict]:
        try:
            raw = gopen(self.url, "rb")
        except (OSError, ValueError) as exc:
            raise ShardError(self.url, None, f"cannot open ({exc})") from exc
        walk = _TarWalk(raw, self.url)
        try:
            files = tar_file_expander([{"url": self.url, "stream": walk}], handler=reraise_exception)
            for sample in group_by_keys(_checked(files, walk), handler=reraise_exception):
                self.last_key = sample["__key__"]
                yield sample
            self.num_bytes = walk.num_bytes
        except (_TarDamaged, tarfile.TarError, OSError, ValueError, EOFError) as exc:
            try:
                reason = walk.finish() or _message(exc)
            except OSError:  # the stream itself failed (a pipe: command's exit status)
                reason = _message(exc)
            status = _close(raw)
            what = "tar unreadable after this sample" if self.last_key else "tar unreadable"
            raise ShardError(self.url, self.last_key,
                             f"{what}: {reason}" + (f"; {status}" if status else "")) from exc
        finally:
            _close(raw)


def _checked(files: Iterator[dict], walk: _TarWalk) -> Iterator[dict]:
    """Pass tar members through; at the end of the shard, stop if the tar is damaged, so that
    group_by_keys does not yield the sample in progress unless all its members were read."""
    key, exts = None, set()
    for item in files:
        if item == {}:  # tar_file_expander's end-of-shard marker
            problem = walk.finish()
            if problem:
                if exts.issuperset(MEMBERS):
                    yield item
                raise _TarDamaged(problem)
        else:
            prefix, ext = base_plus_ext(item["fname"])
            key, exts = prefix, (exts if prefix == key else set()) | {ext}
        yield item


def _message(exc: BaseException) -> str:
    """The first line of an exception webdataset decorated with streams and URLs."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split(" @ ")[0]


def _close(stream) -> str | None:
    """Close a shard stream; what went wrong with it (a pipe: or curl command's exit status)."""
    try:
        stream.close()
    except OSError as exc:
        status = getattr(stream, "status", None)
        return f"the command exited with status {status}" if status is not None else str(exc)
    return None


def iter_raw_samples(urls: str | Iterable[str],
                     handler: Callable[[Exception], bool] = reraise_exception) -> Iterator[dict]:
    """Raw samples of every shard in order. ``handler(ShardError) -> True`` goes on with the next
    shard; the default re-raises."""
    for url in expand_urls(urls):
        try:
            yield from ShardReader(url)
        except ShardError as exc:
            if not handler(exc):
                break
