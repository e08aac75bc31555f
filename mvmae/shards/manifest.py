"""The samples per shard that a job's manifests list, without reading the shards: what sizes an
equal epoch of training (``mvmae.train.trainer.equal_epoch``).

A shard ``<dir>/<split>-NNNNNN.tar`` is listed in ``<dir>/<split>-manifest.jsonl`` (FORMAT.md:
one line per input video, with its ``shard`` and the ``keys`` of its samples; ``mvmae shards
manifest`` rewrites it from the shards' stats). Local paths, ``file:``, ``http(s)://``, ``s3://``
and ``gs://`` URLs are looked up, read as the shards are (``fetch.open_shard``). No torch here.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from typing import Iterable
from urllib.parse import urlparse

from mvmae.shards.fetch import CURL_SCHEMES, FSSPEC_SCHEMES, ReadConfig, expand_urls, open_shard

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = "-manifest.jsonl"
_SCHEMES = ("", "file", *CURL_SCHEMES, *FSSPEC_SCHEMES)


def manifest_url(shard_url: str) -> tuple[str, str] | None:
    """(URL of the manifest that lists ``shard_url``, the shard's name there, e.g. ``train-000003``);
    None for a URL that is no ``<split>-NNNNNN.tar`` at a location that can be looked into
    (``pipe:`` commands, other names)."""
    if urlparse(shard_url).scheme not in _SCHEMES:
        return None
    folder, name = posixpath.split(shard_url)
    stem, ext = posixpath.splitext(name)
    split, _, number = stem.rpartition("-")
    if ext != ".tar" or not split or not number.isdigit():
        return None
    return posixpath.join(folder, f"{split}{MANIFEST_SUFFIX}"), stem


def read_manifest_counts(url: str, read: ReadConfig | None = None,
                         keys: frozenset[str] | None = None) -> Counter[str]:
    """Samples per shard name in one manifest (videos that failed count 0; a shard is a key of the
    result when the manifest lists it at all); keys: only the samples with these keys. Raises
    OSError when it cannot be read, ValueError when a line is not a manifest record."""
    counts: Counter[str] = Counter()
    with open_shard(url, read or ReadConfig()) as stream:
        for number, line in enumerate(stream.read().decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                video = json.loads(line)
                shard, sample_keys = video["shard"], video.get("keys") or []
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{url}, line {number}: not a manifest record ({exc})") from exc
            ok = video.get("status", "ok") == "ok"
            counts[shard] += sum(ok and (keys is None or k in keys) for k in sample_keys)
    return counts


def manifest_sample_counts(urls: str | Iterable[str], read: ReadConfig | None = None,
                           keys: frozenset[str] | None = None) -> list[int] | None:
    """The samples of each shard of ``urls`` (in their order, a brace pattern expanded) by the
    manifests beside them; keys: only the samples with these keys. None when a shard is in no
    manifest (the reason logged): a URL not of a job's shards, a manifest missing, unreadable,
    or older than the shard."""
    shard_urls = expand_urls(urls)
    located = [manifest_url(url) for url in shard_urls]
    if None in located:
        log.info("no manifest for %s: not a <split>-NNNNNN.tar of a folder or bucket",
                 shard_urls[located.index(None)])
        return None
    manifests: dict[str, Counter[str]] = {}
    for manifest, _ in located:
        if manifest in manifests:
            continue
        try:
            manifests[manifest] = read_manifest_counts(manifest, read, keys)
        except (OSError, ValueError) as exc:
            log.info("manifest %s not read: %s", manifest, exc)
            return None
    counts = []
    for url, (manifest, shard) in zip(shard_urls, located):
        if shard not in manifests[manifest]:
            log.info("%s does not list %s (rewrite it: mvmae shards manifest)", manifest, url)
            return None
        counts.append(manifests[manifest][shard])
    return counts
