"""Where a job's outputs go when OUT is a URL (``s3://bucket/shards``, ``gs://...``): object
storage through fsspec.

Object stores have no atomic rename (fsspec's ``mv`` is copy then delete), but an object becomes
visible only when its single PUT (or its multipart completion) succeeds. So a shard is built in
a local scratch folder exactly as for a local job (the same bytes), then uploaded whole from its
file (``put_file``), and its stats JSON uploaded after it as the shard's commit marker: a reader
or a rerun that finds the marker finds the whole tar. A shard is never streamed through
``fs.open(url, "wb")``, which commits what it holds on ``close()`` even when the body raised.

Every PUT and GET is retried with backoff (``retries`` times from ``retry_delay_s``, doubling) on
top of the client's own retries (s3fs and botocore retry a throttled request themselves); a PUT
repeated after a reply was lost writes the same bytes again. Credentials come only from the
standard environment and configuration files of the client (``AWS_*``, ``~/.aws``;
``AWS_ENDPOINT_URL`` for another endpoint); nothing here logs them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from mvmae.shards.fetch import MissingExtraError, filesystem, is_remote

__all__ = ["MissingExtraError", "Store", "StoreError", "filesystem", "is_remote"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreError(OSError):
    """An object could not be written or read after the retries: names the URL and the reason."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


@dataclass
class Store:
    """A job's output folder in object storage. Names are relative to ``url``."""

    url: str
    retries: int = 4
    retry_delay_s: float = 1.0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.fs, self.root = filesystem(self.url)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _retry(self, what: str, name: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff; FileNotFoundError passes through at once."""
        delays = [self.retry_delay_s * 2 ** i for i in range(self.retries)]
        for attempt in range(len(delays) + 1):
            try:
                return call()
            except FileNotFoundError:
                raise
            except Exception as exc:  # botocore, aiohttp and OS errors alike: the reason is kept
                reason = f"{type(exc).__name__}: {exc}"
                if attempt == len(delays):
                    raise StoreError(self.url_of(name), f"cannot {what} after {attempt + 1} attempts "
                                                        f"({reason})") from exc
                log.warning("%s: cannot %s (%s); retry %d of %d in %.3g s", self.url_of(name), what, reason,
                            attempt + 1, len(delays), delays[attempt])
                time.sleep(delays[attempt])
        raise AssertionError("not reached")

    def upload(self, local: Path, name: str) -> None:
        """The whole file ``local`` as object ``name`` (one PUT, or a multipart upload completed
        at once: visible whole or not at all). Raises :class:`StoreError`."""
        self._retry("upload", name, lambda: self.fs.put_file(str(local), self._path(name)))

    def put_bytes(self, name: str, data: bytes) -> None:
        """``data`` as object ``name`` (one PUT). Raises :class:`StoreError`."""
        self._retry("write", name, lambda: self.fs.pipe_file(self._path(name), data))

    def put_json(self, name: str, obj) -> None:
        self.put_bytes(name, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def read_bytes(self, name: str) -> bytes | None:
        """Object ``name``, None when it does not exist. Raises :class:`StoreError`."""
        try:
            return self._retry("read", name, lambda: self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            return None

    def read_json(self, name: str):
        """Object ``name`` as JSON; None when missing or not JSON (a marker not to trust)."""
        data = self.read_bytes(name)
        try:
            return None if data is None else json.loads(data)
        except ValueError:
            return None

    def names(self, pattern: str) -> list[str]:
        """Names of the objects matching the glob ``pattern``, sorted (the listing read afresh)."""
        self.fs.invalidate_cache()
        paths = self._retry("list", pattern, lambda: self.fs.glob(self._path(pattern)))
        return sorted(p.rsplit("/", 1)[-1] for p in paths)
