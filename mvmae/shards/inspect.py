"""``mvmae shards inspect|verify|export``: counts, integrity checks and single-sample export.

Shards are named by URLs (local paths, brace patterns, ``http(s)://``, ``pipe:``) and read by
:class:`mvmae.shards.stream.ShardReader`, as training reads them: every wait bounded, a failed
remote read retried with backoff, the tar structure checked (``ReadConfig``). Nothing here imports
torch.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mvmae.extract.export import save_export
from mvmae.extract.video import VideoFields
from mvmae.shards.sample import SampleError, ShardSample, decode_sample, parse_record
from mvmae.shards.stream import ReadConfig, ShardError, ShardReader, expand_urls, local_path


class SampleNotFoundError(ShardError):
    """No shard of the list holds the key."""

    def __init__(self, urls: list[str], key: str) -> None:
        shards = ", ".join(urls[:3]) + (f" and {len(urls) - 3} more" if len(urls) > 3 else "")
        ValueError.__init__(self, f"no sample with key {key!r} in {len(urls)} shard(s): {shards}")
        self.url, self.key, self.reason = shards, key, "no sample with this key"


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify_shards`: the shard, the sample key (None: the whole shard)."""

    shard: str
    key: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.shard} {self.key or '-'}: {self.reason}"


# ----------------------------------------------------------------------------- inspect


def _new_stats() -> dict:
    return {"num_samples": 0, "num_videos": 0, "classes": Counter(), "bytes": 0, "num_frames": 0,
            "seconds": 0.0, "format_versions": set(), "methods": set(), "num_clipped": 0,
            "sources": set()}


def _add_record(stats: dict, record: dict) -> None:
    stats["num_samples"] += 1
    stats["classes"][record.get("class_name", str(record.get("label")))] += 1
    frames, fps = record.get("num_frames", 0), record.get("fps") or 0
    stats["num_frames"] += frames
    stats["seconds"] += frames / fps if fps else 0.0
    stats["format_versions"].add(record.get("format_version"))
    stats["methods"].add(record.get("extraction", {}).get("method", "?"))
    stats["num_clipped"] += record.get("quantization", {}).get("num_clipped", 0)
    stats["sources"].add(record.get("source"))


def _finish_stats(stats: dict) -> dict:
    """JSON-ready: distinct videos counted, sets sorted, the class histogram by name."""
    out = {k: v for k, v in stats.items() if k != "sources"}
    out["num_videos"] = len(stats["sources"])
    out["classes"] = dict(sorted(stats["classes"].items()))
    out["format_versions"] = sorted(stats["format_versions"], key=str)
    out["methods"] = sorted(stats["methods"])
    out["seconds"] = round(stats["seconds"], 3)
    return out


def inspect_shards(urls: str | Iterable[str], config: ReadConfig | None = None) -> dict:
    """Counts per shard and in total, from the records alone (no MV or JPEG decoding).

    Returns ``{"shards": [{"url", ...counts}], "total": {"num_shards", ...counts}}``; counts:
    num_samples, num_videos (distinct ``source``), classes (class_name -> samples), bytes,
    num_frames, seconds (of video), format_versions, methods (extraction), num_clipped (MV values
    clipped by quantization). Raises :class:`ShardError` on a damaged shard or record.
    """
    shards, total = [], _new_stats()
    for url in expand_urls(urls):
        stats = _new_stats()
        reader = ShardReader(url, config)
        for sample in reader:
            try:
                record = parse_record(sample)
            except SampleError as exc:
                raise ShardError(url, sample["__key__"], _reason(exc, sample["__key__"])) from exc
            _add_record(stats, record)
            _add_record(total, record)
        stats["bytes"] = reader.num_bytes
        total["bytes"] += reader.num_bytes
        shards.append({"url": url, **_finish_stats(stats)})
    return {"shards": shards, "total": {"num_shards": len(shards), **_finish_stats(total)}}


# ----------------------------------------------------------------------------- verify


def verify_shards(urls: str | Iterable[str], progress: Callable[[str, int], None] | None = None,
                  config: ReadConfig | None = None) -> list[Problem]:
    """Check every sample of every shard; the problems found (empty: all good).

    Per sample: all members present, CRC32 of each, zstd, JPEG, shapes against the record, the
    record's key and label; keys unique over all ``urls``; the tar intact to its end; for a local
    shard, its stats file ``<name>.json`` agrees (sample keys and count, bytes).
    ``progress(url, num_samples)`` is called after each shard.
    """
    problems: list[Problem] = []
    seen: dict[str, str] = {}  # key -> first shard holding it
    for url in expand_urls(urls):
        keys: list[str] = []
        reader = ShardReader(url, config)
        try:
            for sample in reader:
                key = sample["__key__"]
                keys.append(key)
                if key in seen:
                    problems.append(Problem(url, key, f"duplicate key (also in {seen[key]})"))
                seen.setdefault(key, url)
                reason = _check_sample(sample)
                if reason:
                    problems.append(Problem(url, key, reason))
        except ShardError as exc:
            problems.append(Problem(url, exc.key, exc.reason))
        path = local_path(url)
        if path is not None and path.is_file():
            problems.extend(_check_stats(url, path, keys))
        if progress is not None:
            progress(url, len(keys))
    return problems


def _check_sample(sample: dict) -> str | None:
    """Why a raw sample is bad, naming the member concerned (None: it decodes, its record
    describes its members (``sample.SampleCodec``) and names its key and label)."""
    key = sample["__key__"]
    try:
        decoded = decode_sample(sample, with_iframes=True, check=True)
    except SampleError as exc:
        return _reason(exc, key)
    record = decoded.record
    if record.get("key") != key:
        return f"record names key {record.get('key')!r}"
    if decoded.label != record.get("label"):
        return f"label {decoded.label} but record says {record.get('label')}"
    return None


def _reason(exc: SampleError, key: str) -> str:
    """A sample error's message without the ``sample 'key': `` the problem line names already."""
    return str(exc).removeprefix(f"sample {key!r}: ")


def _check_stats(url: str, path: Path, keys: list[str]) -> list[Problem]:
    """The shard against the stats file the job wrote beside it."""
    stem = path.name[:-len(".tar")] if path.name.endswith(".tar") else path.stem
    stats_path = path.with_name(f"{stem}.json")
    if not stats_path.is_file():
        return [Problem(url, None, f"no stats file {stats_path.name} beside it (an incomplete shard)")]
    try:
        stats = json.loads(stats_path.read_text())
        listed = [k for video in stats["videos"] for k in video.get("keys", [])]
        num_samples, num_bytes = stats["num_samples"], stats["bytes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [Problem(url, None, f"unreadable stats file {stats_path.name} ({exc})")]
    problems = []
    missing = [k for k in listed if k not in set(keys)]
    extra = [k for k in keys if k not in set(listed)]
    if num_samples != len(keys) or missing or extra:
        detail = "".join(f"; {name}: {', '.join(ks[:5])}{' ...' if len(ks) > 5 else ''}"
                         for name, ks in (("missing", missing), ("not listed", extra)) if ks)
        problems.append(Problem(url, None, f"{len(keys)} samples, {stats_path.name} says "
                                           f"{num_samples}{detail}"))
    size = path.stat().st_size
    if num_bytes != size:
        problems.append(Problem(url, None, f"{size} bytes, {stats_path.name} says {num_bytes}"))
    return problems


# ----------------------------------------------------------------------------- export


def extraction_options(urls: str | Iterable[str], config: ReadConfig | None = None) -> dict:
    """The ``extract run`` options the shards were made with, from the record of the first sample
    that reads: ``ExtractConfig`` fields ``grid``, ``iframe_short_side``, ``raw`` and
    ``skip_loop_filter`` (one a record of an older mvmae lacks is left out). Shards that cannot
    be read are passed over (training skips them too); {} when none can."""
    for url in expand_urls(urls):
        try:
            with closing(iter(ShardReader(url, config))) as samples:  # stops the read (a curl) at once
                raw = next(samples, None)
            record = parse_record(raw) if raw is not None else None
        except (OSError, ShardError, SampleError):
            continue
        if record is None:
            continue
        extraction = record.get("extraction") or {}
        found = {"grid": record.get("grid"), "iframe_short_side": extraction.get("iframe_short_side"),
                 "raw": extraction["method"] == "raw" if "method" in extraction else None,
                 "skip_loop_filter": extraction.get("skip_loop_filter")}
        return {k: v for k, v in found.items() if v is not None}
    return {}


def find_sample(urls: str | Iterable[str], key: str, config: ReadConfig | None = None) -> dict:
    """The raw sample ``key`` (the first one, reading the shards in order)."""
    urls = expand_urls(urls)
    for url in urls:
        for sample in ShardReader(url, config):
            if sample["__key__"] == key:
                return sample
    raise SampleNotFoundError(urls, key)


def sample_fields(decoded: ShardSample) -> VideoFields:
    """A decoded sample back into :class:`VideoFields` (MVs dequantized: within 0.125 px/frame).

    meta: the record's ``extraction`` plus the segment (``segment``, ``segment_start``,
    ``num_segments``), ``key`` and ``class_name``. SampleError when the record lacks one.
    """
    record = decoded.record
    try:
        segment = record.get("segment", {"index": 0, "start": 0, "num_segments": 1})
        meta = {**record["extraction"], "segment": segment["index"], "segment_start": segment["start"],
                "num_segments": segment["num_segments"], "key": decoded.key,
                "class_name": record["class_name"]}
        fps = float(record["fps"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleError(f"sample {decoded.key!r}: incomplete record ({type(exc).__name__}: {exc})") from exc
    return VideoFields(mv=decoded.mv, valid=decoded.valid, frame_types=decoded.frame_types,
                       iframes=decoded.iframes, iframe_index=decoded.iframe_index,
                       grid=int(record["grid"]), fps=fps, size=tuple(int(v) for v in record["size"]), meta=meta)


def read_sample(urls: str | Iterable[str], key: str, config: ReadConfig | None = None) -> tuple[VideoFields, dict]:
    """Sample ``key`` of the shards as :class:`VideoFields` (``sample_fields``) and its
    ``{"source", "label", "url"}``, after the checks of ``mvmae shards verify``
    (``sample.decode_sample``).

    Raises :class:`ShardError` naming the key when no shard holds it, or why it is bad.
    """
    sample = find_sample(urls, key, config)
    try:
        decoded = decode_sample(sample, with_iframes=True, check=True)
        fields = sample_fields(decoded)
        extra = {"source": decoded.record["source"], "label": decoded.record["label"], "url": sample["__url__"]}
    except KeyError as exc:
        raise ShardError(sample["__url__"], key, f"incomplete record (KeyError: {exc})") from exc
    except SampleError as exc:
        raise ShardError(sample["__url__"], key, _reason(exc, key)) from exc
    return fields, extra


def export_sample(urls: str | Iterable[str], key: str, out_path: str | Path,
                  config: ReadConfig | None = None) -> VideoFields:
    """Write sample ``key`` as an export-schema ``.npz`` (plus ``source`` and ``label``): see
    ``read_sample``."""
    fields, extra = read_sample(urls, key, config)
    save_export(out_path, fields, extra={"source": extra["source"], "label": extra["label"]})
    return fields
