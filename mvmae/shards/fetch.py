"""Opening shard URLs as byte streams, every wait bounded (the transport half of ``stream.py``).

URL forms, as webdataset names shards: local paths and ``file://`` URLs; ``http(s)://`` (and
``ftp(s)``, ``sftp``, ``scp``) fetched with curl; object storage, ``s3://`` and ``gs://``, read
through fsspec (:class:`ObjectStream`; ``pip install 'mvmae[s3]'`` or ``'mvmae[gcs]'``;
credentials from the environment: ``AWS_*`` and ``AWS_ENDPOINT_URL``, Google's default
credentials); ``pipe:<command>`` (the command's stdout, run by the shell); brace patterns
(``train-{000000..000127}.tar``) and ``::``-separated lists, expanded by :func:`expand_urls`.
Other schemes go to ``webdataset.gopen`` (their waits are not bounded). Nothing here imports
webdataset (nor, through it, torch) unless such a scheme is opened.

A command's stdout (curl's, a ``pipe:``'s) is read through :class:`CommandStream` (a raw stream,
buffered by ``io.BufferedReader``: the tar reader's many 512-byte reads cost no system call
each), which bounds every wait itself: ``stall_s`` without a byte, or ``max_time_s`` for the
whole stream (the time to consume it, pauses of the consumer included), kills the command and
raises :class:`TimeoutError`; a command that exits with a
failure status raises ``OSError`` with its status and the end of its stderr. curl also gets ``--connect-timeout``,
``--max-time`` and ``--speed-limit``/``--speed-time`` (a trickle below ``stall_bytes_per_s``).
webdataset's own ``gopen_curl`` retries 30 times with no overall limit; retries here are
``stream.ShardReader``'s, with backoff.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable
from urllib.parse import urlparse

import braceexpand

CURL_SCHEMES = ("http", "https", "ftp", "ftps", "sftp", "scp")
FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs")  # object storage, read through fsspec
LOCAL_SCHEMES = ("", "file")
OBJECT_BLOCK = 8 << 20  # bytes per ranged GET of an object
PIPE_OK_STATUS = (0, 141)  # 141: a pipeline's upstream command ended by SIGPIPE (as webdataset)
READ_CHUNK = 1 << 20  # bytes of the buffer over a command's pipe
EXIT_WAIT_S = 10.0  # how long a command that closed its stdout may take to exit
STDERR_TAIL = 500  # characters of a failed command's stderr kept in the error
_LIST_SEPARATOR = re.compile(r"::(?![^\[\]]*\])")  # '::' outside an IPv6 literal's brackets


@dataclass
class ReadConfig:
    """How shards are read. Waits (all in seconds): connect_timeout_s to connect (curl);
    stall_s without receiving a byte, or below stall_bytes_per_s on average over stall_s (curl),
    aborts the stream; max_time_s bounds the time to consume one shard (from the start of its
    transfer to its end, time the consumer spends not reading included). A failed read of a
    remote shard (anything but a local file) is retried ``retries`` times after retry_delay_s,
    doubling each time, resuming after the samples already delivered. check_crc: compare each member's CRC32
    with the record (about 1 GB/s; used by the decoding stages).
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

    def retry_delays(self) -> list[float]:
        """Seconds slept before each retry: retry_delay_s, doubled each time."""
        return [self.retry_delay_s * 2 ** i for i in range(self.retries)]

    def curl_command(self, url: str) -> list[str]:
        return ["curl", "--fail", "--silent", "--show-error", "--location",
                "--connect-timeout", f"{self.connect_timeout_s:g}", "--max-time", f"{self.max_time_s:g}",
                "--speed-limit", str(self.stall_bytes_per_s), "--speed-time", f"{max(1, round(self.stall_s))}",
                url]


def expand_urls(urls: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard URLs, in order, from a string or a list: ``::`` lists split, brace patterns expanded
    (``"a-{0..2}.tar"`` -> 3 URLs). Raises ValueError when nothing is left."""
    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    expanded = [u for item in items for part in _LIST_SEPARATOR.split(str(item)) if part
                for u in braceexpand.braceexpand(part)]
    if not expanded:
        raise ValueError(f"no shard URL in {urls!r}")
    return expanded


def local_path(url: str) -> Path | None:
    """The file behind a local-path or ``file://`` URL; None for http, pipe: and the like."""
    parsed = urlparse(url)
    if parsed.scheme == "":
        return Path(url)
    if parsed.scheme == "file":
        from urllib.request import url2pathname  # urllib.request (http, ssl, email) costs every command ~20 ms

        return Path(url2pathname(parsed.path))
    return None


def open_shard(url: str, config: ReadConfig) -> BinaryIO:
    """A binary stream of one shard (``read(n)`` returns n bytes unless the stream ends).

    Raises OSError when it cannot be opened; reading a command's output (a buffered
    :class:`CommandStream`) raises OSError (TimeoutError for a stall) when the transfer fails.
    """
    if "GOPEN_REWRITE" in os.environ:  # webdataset's URL rewriting rules (imported only then: it imports torch)
        from webdataset.gopen import rewrite_url

        url = rewrite_url(url)
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    scheme = urlparse(url).scheme
    if scheme in CURL_SCHEMES:
        return io.BufferedReader(CommandStream(config.curl_command(url), url, config), READ_CHUNK)
    if scheme in FSSPEC_SCHEMES:
        return io.BufferedReader(ObjectStream(url, config), READ_CHUNK)
    if scheme == "pipe":
        command = CommandStream(url[len("pipe:"):], url, config, shell=True, ok_status=PIPE_OK_STATUS)
        return io.BufferedReader(command, READ_CHUNK)
    from webdataset.gopen import gopen  # gs:, hf:, ais: ... (webdataset imports torch)

    return gopen(url, "rb")


class MissingExtraError(RuntimeError):
    """An optional dependency is not installed: the message names the extra to install."""


def is_remote(out: str | Path) -> bool:
    """Whether OUT names object storage (a URL whose scheme is not ``file``)."""
    return urlparse(str(out)).scheme not in LOCAL_SCHEMES and "://" in str(out)


def filesystem(url: str, connect_timeout_s: float | None = None, read_timeout_s: float | None = None):
    """(fsspec filesystem, path) of a URL; s3 and gs clients get the given timeouts (to connect,
    and without a byte read). Raises :class:`MissingExtraError` naming the extra when the
    scheme's package is missing."""
    scheme = urlparse(url).scheme
    extra = "s3" if scheme in ("s3", "s3a") else "gcs" if scheme in ("gs", "gcs") else scheme
    try:
        import fsspec
    except ImportError as exc:
        raise MissingExtraError(f"{url}: object storage needs fsspec: pip install 'mvmae[{extra}]'") from exc
    try:
        return fsspec.core.url_to_fs(url, **_timeout_options(scheme, connect_timeout_s, read_timeout_s))
    except ImportError as exc:
        raise MissingExtraError(f"{url}: {exc}; pip install 'mvmae[{extra}]'") from exc


def _timeout_options(scheme: str, connect_timeout_s: float | None, read_timeout_s: float | None) -> dict:
    """The filesystem options that set its client's timeouts: botocore's for s3, aiohttp's per
    request for gs (gcsfs); none for another scheme or without timeouts."""
    if not (connect_timeout_s or read_timeout_s):
        return {}
    if scheme in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": connect_timeout_s, "read_timeout": read_timeout_s}}
    if scheme in ("gs", "gcs"):
        try:
            import aiohttp  # gcsfs's HTTP client
        except ImportError:  # no gcsfs either: url_to_fs names the extra
            return {}
        return {"requests_timeout": aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s)}
    return {}


class ObjectStream(io.RawIOBase):
    """An object in storage (``s3://``, ``gs://``) read through fsspec, a raw binary stream whose
    waits are bounded as a command's are: the client's connect and read timeouts
    (``connect_timeout_s``, ``stall_s``; s3 and gs) and ``max_time_s`` for the whole stream. Every client
    error (botocore, aiohttp, ...) comes out as an OSError (TimeoutError past ``max_time_s``)
    naming the URL, for :class:`stream.ShardReader` to retry."""

    def __init__(self, url: str, config: ReadConfig) -> None:
        super().__init__()
        self.url, self.config = url, config
        self._deadline = time.monotonic() + config.max_time_s
        fs, path = filesystem(url, config.connect_timeout_s, config.stall_s)
        self._file = self._call(lambda: fs.open(path, "rb", block_size=OBJECT_BLOCK, cache_type="readahead"))

    def _call(self, fn):
        try:
            return fn()
        except OSError:
            raise
        except Exception as exc:  # a client's own error type: an OSError for the retries
            raise OSError(f"{type(exc).__name__}: {exc}") from exc

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if time.monotonic() > self._deadline:
            raise TimeoutError(f"{self.url}: not done after max_time_s={self.config.max_time_s:g} s")
        data = self._call(lambda: self._file.read(len(buffer)))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._file.close()
        super().close()


class CommandStream(io.RawIOBase):
    """The stdout of a command, a raw binary stream whose every wait is bounded by a
    :class:`ReadConfig` (``open_shard`` buffers it in an ``io.BufferedReader``).

    ``readinto`` blocks at most ``stall_s`` for data and never past ``max_time_s`` after the
    start (time the consumer spends not reading counts too); then the command (its whole process
    group) is killed and TimeoutError raised. At the end of its output the command must exit with
    a status in ``ok_status`` (within 10 s), else OSError names the status and the end of its
    stderr. ``close()`` kills a command still running (the reader stopped early) and never raises.
    """

    def __init__(self, command: list[str] | str, url: str, config: ReadConfig, *, shell: bool = False,
                 ok_status: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.url, self.config, self.ok_status = url, config, ok_status
        self.name = "command" if shell else command[0]
        # stderr into a file: a chatty command must not block on a full pipe (it would look stalled)
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(command, shell=shell, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self._stderr, start_new_session=True)
        except OSError:  # no such program
            self._stderr.close()
            io.RawIOBase.close(self)  # nothing left for close() (or the garbage collector's) to end
            raise
        self._fd = self.proc.stdout.fileno()
        self._poll = select.poll()  # not select.select: no limit on the descriptor's number
        self._poll.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self._deadline = time.monotonic() + config.max_time_s
        self._eof = False

    def __repr__(self) -> str:
        return f"<{self.name} {self.url}>"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """Up to ``len(buffer)`` bytes into ``buffer`` as soon as some are there; 0 at the end
        (the exit status checked then)."""
        if self._eof or not len(buffer):
            return 0
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._timeout(f"not done after max_time_s={self.config.max_time_s:g} s")
        if not self._poll.poll(1000 * min(self.config.stall_s, left)):
            if left <= self.config.stall_s:
                self._timeout(f"not done after max_time_s={self.config.max_time_s:g} s")
            self._timeout(f"stalled: no data for stall_s={self.config.stall_s:g} s")
        num_bytes = os.readv(self._fd, [buffer])
        if not num_bytes:
            self._eof = True
            self._check_exit()
        return num_bytes

    def _check_exit(self) -> None:
        try:
            status = self.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            raise OSError(f"{self.name} closed its output but did not exit within {EXIT_WAIT_S:g} s") from None
        if status not in self.ok_status:
            said = self._stderr_tail()
            raise OSError(f"{self.name} exited with status {status}" + (f": {said}" if said else ""))

    def _timeout(self, reason: str) -> None:
        self._kill()
        raise TimeoutError(f"{self.name}: {reason}")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text[-STDERR_TAIL:].replace("\n", " | ")

    def _kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=EXIT_WAIT_S)

    def close(self) -> None:
        if self.closed:
            return
        self._kill()
        self.proc.stdout.close()
        self._stderr.close()
        super().close()
