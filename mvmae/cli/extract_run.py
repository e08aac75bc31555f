"""``mvmae extract run``: a dataset to shards in a folder or object storage, on this machine's
workers or on Ray (:mod:`mvmae.job`); registered on the ``extract`` group of :mod:`mvmae.cli.data`."""

from __future__ import annotations

from pathlib import Path

import click

from mvmae.cli.base import handle_errors
from mvmae.cli.data import extract


def _parse_part(value: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected i/N (e.g. 0/4), got {value!r}") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"need 0 <= i < N, got {value!r}")
    return i, n


def _output(out: str, scratch: Path | None) -> tuple[str | None, Path]:
    """(object storage URL or None, the local folder shards are built in) of OUT."""
    import hashlib
    import tempfile
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from mvmae.job.store import is_remote

    if not is_remote(out):
        return None, Path(url2pathname(urlparse(out).path)) if out.startswith("file://") else Path(out)
    default = Path(tempfile.gettempdir()) / f"mvmae-scratch-{hashlib.sha1(out.encode()).hexdigest()[:12]}"
    return out, scratch or default


@extract.command("run")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, exists=True))
@click.argument("out_dir", metavar="OUT")
@click.option("--split", default="train", show_default=True, help="Shard name prefix: <split>-000000.tar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="What runs the shards: supervised worker processes here (local), or one Ray task "
                   "per shard (ray; pip install 'mvmae[ray]'), each supervised as a local worker.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="The Ray cluster to join (as ray.init's address); default: the one RAY_ADDRESS "
                   "names, else a new local instance with --workers CPUs.")
@click.option("--scratch", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With an object storage OUT: the local folder shards are built in before their "
                   "upload (default: a folder named after OUT in the system's temporary folder).")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Worker processes (one decoder thread each), supervised: see --video-timeout. "
                   "0 extracts in this process, without the time limit or protection from a "
                   "decoder crash.")
@click.option("--shard-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Videos per shard.")
@click.option("--part", "part", default="0/1", show_default=True,
              help="Do part i of N (i/N): shard j belongs to part j % N; run N machines with i = 0..N-1 "
                   "(at once into one shared OUT_DIR if you like; a part already running there is refused).")
@click.option("--max-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Cut longer videos into segments stored as samples <key>_<k> (0: never).")
@click.option("--grid", type=click.Choice(["4", "8", "16"]), default="8", show_default=True,
              help="MV cell size in px.")
@click.option("--iframe-size", type=click.IntRange(min=0), default=256, show_default=True,
              help="I-frame short side in px (never upscaled; 0 keeps the source size). 224 "
                   "reads 7-10% faster a clip in training and costs 1.2-1.8 dB PSNR on the 224-px "
                   "crops (benchmarks/RESULTS.md).")
@click.option("--raw", is_flag=True, help="Store FFmpeg's unresolved vectors (method=raw).")
@click.option("--video-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, metavar="SECONDS",
              help="Time one video may take (all its segments). Past it the worker is killed and "
                   "the video recorded failed, code 'timeout', never tried again by this job. "
                   "It also bounds the final write of each shard's tar: past it the shard is "
                   "redone, as after a worker lost between videos (--retries).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Tries more of a video whose worker died (a decoder crash, out of memory) "
                   "before recording it failed, code 'crashed'; also of a shard whose worker was "
                   "lost between videos.")
@handle_errors
def run(input_path: Path, out_dir: str, split: str, engine: str, ray_address: str | None,
        scratch: Path | None, workers: int, shard_size: int, part: str, max_seconds: float, grid: str,
        iframe_size: int, raw: bool, video_timeout: float, retries: int) -> None:
    """Extract a dataset into webdataset shards (resumable, partitionable).

    \b
    INPUT is either
      - a list file of 'path label' lines (VideoMAE / MV-MAE train_split.txt style;
        label = class index or class name; paths relative to the list file), or
      - a folder with one subfolder per class.
    OUT (a folder, or object storage: s3://bucket/prefix, gs://..., through fsspec;
    pip install 'mvmae[s3]' or 'mvmae[gcs]') receives <split>-NNNNNN.tar shards, a stats .json
    beside each, <split>-manifest.jsonl (every video: ok/failed, reason, shard, keys),
    classes.json and <split>-job.json. Into object storage each shard is built in --scratch,
    uploaded whole, then its stats .json (the commit marker); a failed upload is retried with
    backoff, then the shard is left for the next run. Credentials: for s3://, the standard AWS_*
    variables and ~/.aws files (AWS_ENDPOINT_URL for another endpoint); for gs://, Google's
    application default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's login).

    Bad videos never stop the job: they are recorded with their reason, as are videos that hang
    the decoder (--video-timeout) or crash it (--retries); those are remembered in
    <split>-faults.json (<split>-faults-<i>of<N>.json per --part) so that a rerun does not try
    them again. Shards appear only when
    complete; re-running the same command after an interruption (even kill -9) finishes the job.
    A full disk or an unwritable OUT_DIR stops the job with a one-line error naming the file and
    the reason; no partial shard is left, and the same command finishes the job once fixed.
    See mvmae/shards/FORMAT.md for the layout.
    """
    from tqdm import tqdm

    from mvmae.extract.config import ExtractConfig
    from mvmae.job.job import JobConfig, run_job

    part_index, num_parts = _parse_part(part)
    out_url, folder = _output(out_dir, scratch)
    config = JobConfig(input=input_path, out_dir=folder, out_url=out_url, engine=engine, ray_address=ray_address,
                       split=split, shard_size=shard_size,
                       workers=workers, part_index=part_index, num_parts=num_parts,
                       max_seconds=max_seconds, retries=retries, video_timeout=video_timeout,
                       extract=ExtractConfig(grid=int(grid), iframe_short_side=iframe_size, raw=raw))
    bar = tqdm(unit="video", desc=f"extract {split}", dynamic_ncols=True, delay=0.5)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # goes back only for a shard redone after its worker was lost

    try:
        summary = run_job(config, progress)
    except BaseException:
        bar.leave = False  # clear the bar, so that the error starts a line of its own
        raise
    finally:
        bar.close()
    click.echo(f"{summary.num_videos} videos: {summary.num_ok} ok, {summary.num_failed} failed; "
               f"{summary.num_samples} samples in {summary.num_shards} shards "
               f"({summary.shards_written} written, {summary.shards_skipped} already complete), "
               f"{summary.bytes / 1e6:.1f} MB, {summary.seconds:.1f} s -> {out_url or folder}")
    for code, n in sorted(summary.failures_by_code.items(), key=lambda kv: -kv[1]):
        click.echo(f"  failed: {n:6d}  {code}")
    for code, n in sorted(summary.warnings_by_code.items(), key=lambda kv: -kv[1]):
        click.echo(f"  warning: {n:5d}  {code} (see the manifest's 'warnings')")
    if summary.shards_redone:
        went_back = " (the progress bar went back by their videos)" if engine == "local" else ""
        click.echo(f"  {summary.shards_redone} shard(s) redone after a lost worker{went_back}")
    if summary.shards_failed:
        raise click.ClickException(f"{len(summary.shards_failed)} shard(s) failed after retries "
                                   f"({', '.join(summary.shards_failed[:5])}); run the command again")
