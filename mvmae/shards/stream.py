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

The tar is parsed by ``tarstream.py``: damage that reading cannot get past (a cut, data after
the end-of-archive block) ends the read (retried for a remote shard), after the last sample whose
members were all read; a damaged header is resynced (only the sample it hit is lost) and reported
as a :class:`ShardReadError` once the rest of the shard has been delivered, without a retry when
the transfer itself succeeded (the damage is in the stored bytes).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterable, Iterator

from mvmae.shards.fetch import ReadConfig, expand_urls, local_path, open_shard
from mvmae.shards.tarstream import (DAMAGE_ERRORS, Counted, Resynced, TarDamage, TransferError, group_samples,
                                    tar_members, tar_stream)

__all__ = ["ReadConfig", "ShardError", "ShardReadError", "ShardReader", "expand_urls", "local_path",
           "read_shards"]

log = logging.getLogger(__name__)

Handler = Callable[[Exception], bool]


def reraise_exception(exc: Exception) -> bool:
    """The loud handler (webdataset's ``reraise_exception``, without importing webdataset)."""
    raise exc


class ShardError(ValueError):
    """A shard that cannot be read, or a sample that is not in it. ``key``: the sample concerned,
    or for a shard that could not be read to its end the last sample delivered (None: none was)."""

    def __init__(self, url: str, key: str | None, reason: str) -> None:
        super().__init__(f"{url} {key or '-'}: {reason}")
        self.url, self.key, self.reason = url, key, reason


class ShardReadError(ShardError, OSError):
    """A shard could not be read to its end, after the retries (an OSError, as webdataset's
    handlers and :class:`reader.SkipCounter` expect of a failed shard)."""


class _AttemptFailed(Exception):
    """One read of a shard failed; the message is the reason."""


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
        shard = Counted(raw, transfer=True)
        try:
            try:
                yield from group_samples(tar_members(tar_stream(shard)), self.url)
                resynced = None
            except Resynced as exc:  # read to the end past damaged headers
                resynced = exc
            try:
                raw.close()  # webdataset's own pipes (other schemes) check the command's status here
            except OSError as exc:
                raise TransferError(str(exc)) from exc
            self.num_bytes = shard.num_bytes
        except TransferError as exc:
            raise _AttemptFailed(f"transfer failed{self._after()}: {exc}") from exc
        except (TarDamage, *DAMAGE_ERRORS) as exc:
            raise _AttemptFailed(f"tar unreadable{self._after()}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                raw.close()
        if resynced is not None:  # the stored bytes are damaged: a retry would read the same
            lost = f"{len(resynced.lost)} sample(s) lost: {', '.join(resynced.lost)}" if resynced.lost else \
                "no sample lost"
            raise ShardReadError(self.url, resynced.lost[0] if resynced.lost else self._last_key(),
                                 f"tar damaged: {resynced}; {lost}")

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
