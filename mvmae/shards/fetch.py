"""Fetching shards: URLs opened with bounded waits, retried with backoff, tar members -> raw samples.

Local paths, ``file:``, ``http(s)://`` (curl, every wait bounded by :class:`ReadConfig`: webdataset's
own ``gopen_curl`` retries 30 times with no overall limit), ``pipe:`` commands and whatever else
``webdataset.gopen`` opens. A stream that fails (HTTP error, dropped connection, timeout, damaged
tar) is re-read from the start, skipping the samples already delivered; past the retries the shard
goes to the handler as a :class:`ShardReadError`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import urlparse

import webdataset as wds
from webdataset.gopen import Pipe, gopen, rewrite_url
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys

log = logging.getLogger(__name__)

Handler = Callable[[Exception], bool]
READ_ERRORS = (OSError, EOFError, tarfile.TarError)  # a shard stream failing: retried
TAR_BUFSIZE = 1 << 18  # bytes per read of the tar stream (tarfile's default, 10 KiB, costs many calls)


class ShardReadError(OSError):
    """A shard could not be read to its end after the retries (names the URL and the cause)."""


@dataclass
class ReadConfig:
    """How shards are opened. HTTP(S) goes through curl with every wait bounded, so a stalled
    server cannot hang training: connect_timeout_s to connect, stall_s seconds below
    stall_bytes_per_s aborts, max_time_s caps one whole shard transfer. A failed read is retried
    ``retries`` times, after retry_delay_s, doubling each time, resuming after the samples already
    delivered; then the shard is given to the handler as a :class:`ShardReadError`.
    check_crc: compare each member's CRC32 with the record (about 1 GB/s).
    """

    connect_timeout_s: float = 30.0
    stall_s: float = 60.0
    stall_bytes_per_s: int = 1024
    max_time_s: float = 1800.0
    retries: int = 3
    retry_delay_s: float = 1.0
    check_crc: bool = True

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "stall_s", "max_time_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.retries < 0 or self.retry_delay_s < 0 or self.stall_bytes_per_s < 1:
            raise ValueError("retries and retry_delay_s must be >= 0, stall_bytes_per_s >= 1")

    def curl_command(self, url: str) -> list[str]:
        return ["curl", "--fail", "--silent", "--show-error", "--location",
                "--connect-timeout", f"{self.connect_timeout_s:g}", "--max-time", f"{self.max_time_s:g}",
                "--speed-limit", str(self.stall_bytes_per_s), "--speed-time", f"{max(1, round(self.stall_s))}",
                url]


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard URLs from a string or a list of strings: brace patterns and ``::`` lists expanded."""
    items = [urls] if isinstance(urls, str) else list(urls)
    expanded = [u for item in items for u in wds.shardlists.expand_urls(str(item))]
    if not expanded:
        raise ValueError(f"no shard URL in {urls!r}")
    return expanded


def open_shard(url: str, config: ReadConfig) -> io.RawIOBase:
    """A binary stream of one shard: curl (bounded) for http(s), ``webdataset.gopen`` otherwise."""
    url = rewrite_url(url)
    if urlparse(url).scheme in ("http", "https"):
        return Pipe(config.curl_command(url), mode="rb", bufsize=1 << 20, ignore_status=[141, 23],
                    stderr=subprocess.PIPE)
    return gopen(url, "rb")


def _release(stream, kill: bool) -> str:
    """Close a shard stream; a command (curl, ``pipe:``) is killed if ``kill`` or if it does not
    exit within 10 s. Returns '' or, for a command that failed, its exit status and stderr."""
    if not isinstance(stream, Pipe):
        stream.close()
        return ""
    proc = stream.proc
    if not kill:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    stream.stream.close()
    said = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode in stream.ignore_status or proc.returncode == -signal.SIGKILL:  # fine, or killed here
        return ""
    return f"exit {proc.returncode}" + (f": {said}" if said else "")


def _shard_files(stream, url: str) -> Iterator[dict]:
    """Regular members of a tar stream as webdataset file dicts; a tar whose end-of-archive is
    followed by data was cut short by a damaged header (tarfile stops there silently)."""
    tar = tarfile.open(fileobj=stream, mode="r|*", bufsize=TAR_BUFSIZE)
    for info in tar:
        if info.isreg():
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
        tar.members = []  # streaming: keep no TarInfo per member
    while chunk := tar.fileobj.read(1 << 20):
        if chunk.strip(b"\0"):
            yield {}  # webdataset's end-of-shard marker: group_by_keys delivers the sample read so far
            raise tarfile.ReadError(f"{url}: data after the end of the archive (a damaged member "
                                    f"header cut the shard short)")


def _shard_samples(url: str, config: ReadConfig, handler: Handler) -> Iterator[dict]:
    """Raw samples of one shard read once; the stream is released however the iteration ends,
    and a command that failed (curl: HTTP error, timeout) raises even after a clean-looking tar."""
    stream = open_shard(url, config)
    try:
        yield from group_by_keys(_shard_files(stream, url), handler=handler)
    except READ_ERRORS as exc:
        said = _release(stream, kill=True)
        if said:
            raise OSError(f"{exc} [{said}]") from exc
        raise
    except BaseException:  # the consumer closed the generator, or not a read error
        _release(stream, kill=True)
        raise
    said = _release(stream, kill=False)
    if said:
        raise OSError(f"{url}: {said}")


def read_shards(src: Iterable[dict], config: ReadConfig | None = None,
                handler: Handler = reraise_exception) -> Iterator[dict]:
    """{'url': ...} items -> raw samples {'__key__', '__url__', ext: bytes}.

    A read error is retried (backoff), skipping the samples already yielded; past the retries a
    :class:`ShardReadError` goes to ``handler`` (True: next shard, False: stop).
    """
    config = config or ReadConfig()
    for item in src:
        url = item["url"]
        if hasattr(handler, "count_shard"):
            handler.count_shard()
        done, error = 0, None
        for attempt in range(config.retries + 1):
            if attempt:
                delay = config.retry_delay_s * 2 ** (attempt - 1)
                log.warning("%s: %s; retry %d of %d in %.1f s", url, error, attempt, config.retries, delay)
                time.sleep(delay)
            try:
                with contextlib.closing(_shard_samples(url, config, handler)) as samples:
                    for i, raw in enumerate(samples):
                        if i >= done:  # a retry re-reads from the start: skip what was delivered
                            done += 1
                            yield raw
                error = None
                break
            except READ_ERRORS as exc:
                error = exc
        if error is not None and not handler(ShardReadError(
                f"{url}: unreadable after {config.retries + 1} attempt(s), {done} sample(s) read: {error}")):
            return
