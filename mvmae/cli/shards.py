"""``mvmae shards inspect|verify|export|show|manifest``: looking into shards (local, brace patterns,
http(s), ``s3://``/``gs://``, ``pipe:``)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from mvmae.cli.base import EXPORT_SCHEMA_HELP, handle_errors, main


SHARD_URLS_HELP = """\b
URL forms (as webdataset reads them; several URLs may be given):
  shards/train-000000.tar                  a local file (or file:///abs/path.tar)
  'shards/train-{000000..000127}.tar'      a brace pattern (quote it for the shell)
  https://host/data/train-000000.tar       fetched with curl
  's3://bucket/shards/train-{000000..000127}.tar'   object storage through fsspec
                                           (pip install 'mvmae[s3]'; AWS_* credentials, AWS_ENDPOINT_URL)
  'gs://bucket/shards/train-{000000..000127}.tar'   likewise (pip install 'mvmae[gcs]'; Google's
                                           application default credentials)
  'pipe:aws s3 cp s3://bucket/train-000000.tar -'   a command's stdout
A remote shard (anything but a local file) whose read fails (HTTP or S3 error, dropped or stalled
connection, damaged tar) is read again after --retry-delay seconds, doubling, --retries times.
"""


def read_options(func):
    """The shard-reading options (``ReadConfig``) of the ``shards`` commands, as ``read=``."""
    from mvmae.shards.fetch import ReadConfig

    defaults = ReadConfig()
    options = [
        click.option("--retries", type=click.IntRange(min=0), default=defaults.retries, show_default=True,
                     help="Re-reads of a remote shard whose read failed."),
        click.option("--retry-delay", type=click.FloatRange(min=0), default=defaults.retry_delay_s,
                     show_default=True, help="Seconds before the first re-read (doubled for each next one)."),
        click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=defaults.stall_s,
                     show_default=True, help="Seconds without data after which a transfer is aborted."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True),
                     default=defaults.connect_timeout_s, show_default=True, help="Seconds to connect (curl, s3)."),
        click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=defaults.max_time_s,
                     show_default=True,
                     help="Seconds reading one shard may take in all (its transfer and any pauses of the reader)."),
    ]

    @functools.wraps(func)
    def wrapper(*args, retries, retry_delay, stall_timeout, connect_timeout, max_time, **kwargs):
        read = ReadConfig(retries=retries, retry_delay_s=retry_delay, stall_s=stall_timeout,
                          connect_timeout_s=connect_timeout, max_time_s=max_time)
        return func(*args, read=read, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@main.group()
def shards() -> None:
    """Read shards back: counts, integrity checks, one sample to .npz or a picture."""


@shards.command("inspect", epilog=SHARD_URLS_HELP)
@click.argument("urls", metavar="URL...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@read_options
@handle_errors
def shards_inspect(urls: tuple[str, ...], as_json: bool, read) -> None:
    """Count what the shards hold, from the records alone (fast: nothing is decoded).

    Per shard and in total: samples, videos (distinct sources), frames, seconds of video, bytes,
    MV values clipped by quantization; then the samples per class, the format versions and the
    extraction methods seen. A damaged shard stops the count with a one-line error (see verify).
    """
    from mvmae.shards.inspect import inspect_shards

    report = inspect_shards(urls, read)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    rows = [(s["url"], s) for s in report["shards"]]
    rows.append((f"total: {report['total']['num_shards']} shard(s)", report["total"]))
    width = max(len(name) for name, _ in rows)
    click.echo(f"{'shard':<{width}}  samples   videos    frames   seconds        MB   clipped")
    for name, s in rows:
        click.echo(f"{name:<{width}}  {s['num_samples']:7d}  {s['num_videos']:7d}  {s['num_frames']:8d}"
                   f"  {s['seconds']:8.1f}  {s['bytes'] / 1e6:8.2f}  {s['num_clipped']:8d}")
    total = report["total"]
    classes = ", ".join(f"{name} {n}" for name, n in total["classes"].items())
    click.echo(f"samples per class: {classes or '-'}")
    click.echo(f"format versions: {', '.join(map(str, total['format_versions'])) or '-'}; "
               f"extraction: {', '.join(total['methods']) or '-'}")


@shards.command("verify", epilog=SHARD_URLS_HELP)
@click.argument("urls", metavar="URL...", nargs=-1, required=True)
@read_options
@handle_errors
def shards_verify(urls: tuple[str, ...], read) -> None:
    """Check every sample of the shards; exit status 1 if anything is wrong.

    Each sample must decode: all members present, CRC32 of each, zstd, JPEG, shapes against its
    record; keys must be unique over all URLs; the tar must be intact to its end (a truncated or
    overwritten tar is reported with the last good key); a local shard's stats file
    (<name>.json) must agree with it. Prints one line per problem, 'shard key: reason'
    ('-' for the whole shard), then a summary line. Shards are read as training reads them
    (same timeouts, retries and tar checks).
    """
    from mvmae.shards.inspect import verify_shards

    counts = {"shards": 0, "samples": 0}

    def progress(url: str, num_samples: int) -> None:
        counts["shards"] += 1
        counts["samples"] += num_samples

    problems = verify_shards(urls, progress, read)
    for problem in problems:
        click.echo(str(problem))
    bad = len({p.shard for p in problems})
    click.echo(f"{counts['shards']} shard(s), {counts['samples']} samples: "
               + (f"{len(problems)} problem(s) in {bad} shard(s)" if problems else "all good"))
    if problems:
        sys.exit(1)


@shards.command("export", epilog=SHARD_URLS_HELP + "\n" + EXPORT_SCHEMA_HELP)
@click.argument("urls", metavar="URL...", nargs=-1, required=True)
@click.option("--key", required=True, help="Sample key (the video's stem; <stem>_<k> for segment k).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Output .npz in the export schema, plus 'source' and 'label' (written atomically).")
@read_options
@handle_errors
def shards_export(urls: tuple[str, ...], key: str, out: Path, read) -> None:
    """Write one sample of the shards as an .npz in the export schema of `mvmae extract video`.

    MVs come back dequantized (within 0.125 px/frame of the extraction), I-frames decoded from
    their JPEGs; meta holds the record's extraction info and the segment. The shards are read
    in order until the key is found.
    """
    from mvmae.shards.inspect import export_sample

    fields = export_sample(urls, key, out, read)
    types = bytes(fields.frame_types).decode()
    click.echo(f"{key}: {fields.num_frames} frames ({types.count('I')} I, {types.count('P')} P, "
               f"{types.count('B')} B), segment {fields.meta['segment'] + 1} of "
               f"{fields.meta['num_segments']}, {len(fields.iframe_index)} I-frames -> {out}")


@shards.command("show", epilog=SHARD_URLS_HELP)
@click.argument("urls", metavar="URL...", nargs=-1, required=True)
@click.option("--key", required=True, help="Sample key (the video's stem; <stem>_<k> for segment k).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Output .png (written atomically).")
@read_options
@handle_errors
def shards_show(urls: tuple[str, ...], key: str, out: Path, read) -> None:
    """Draw one sample's motion fields as arrows: a picture to look at what the shards hold.

    \b
    Three panels: the first I-frame with the field of the frame after it over it, then the
    field of a P-frame and of a B-frame (those with the most moving cells) over their I-frame.
    Arrows start at each cell's centre along (dx, dy), coloured by length (px per frame, one
    scale for all panels) and lengthened by the factor in each panel's title; grey cells have
    no vector (intra blocks). The shards are read in order until the key is found.
    """
    from mvmae.extract.figure import plot_motion
    from mvmae.shards.inspect import read_sample

    fields, extra = read_sample(urls, key, read)
    segment = (f", segment {fields.meta['segment'] + 1} of {fields.meta['num_segments']}"
               if fields.meta["num_segments"] > 1 else "")
    plot_motion(fields, out, title=f"{key} ({fields.meta['class_name']}{segment}) in {extra['url']}")
    click.echo(f"{key}: {_frame_counts(fields)}{segment} -> {out}")


def _frame_counts(fields) -> str:
    types = bytes(fields.frame_types).decode()
    return f"{fields.num_frames} frames ({types.count('I')} I, {types.count('P')} P, {types.count('B')} B)"


@shards.command("manifest")
@click.argument("out", metavar="OUT")
@click.option("--split", default="train", show_default=True, help="Shard name prefix.")
@handle_errors
def shards_manifest(out: str, split: str) -> None:
    """Rewrite OUT's <split>-manifest.jsonl from the stats .json of every complete shard there
    (a folder, or object storage: s3://bucket/prefix, gs://...). Run it after the parts of a job
    written into one bucket at once have all finished: each part writes the manifest as it ends.
    Training on several ranks sizes its epochs from it (README, "Training at scale")."""
    from mvmae.job.job import write_manifest
    from mvmae.job.publish import write_store_manifest
    from mvmae.job.store import Store, is_remote

    written = write_store_manifest(Store(out), split) if is_remote(out) else write_manifest(Path(out), split)
    click.echo(str(written))
