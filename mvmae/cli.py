"""The ``mvmae`` command line. The only place that turns exceptions into exit codes and messages."""

from __future__ import annotations

import functools
import json
import logging
import sys
import textwrap
from pathlib import Path

import click

from mvmae import __version__
from mvmae.console import LevelFormatter

log = logging.getLogger("mvmae")

EXPORT_SCHEMA_HELP = """\b
Export schema (one .npz per video; arrays):
  mv            float32 [T,2,h,w]  (dx, dy) px per frame: content of cell p in
                                   frame t was at p - (dx, dy) in frame t-1
  valid         bool    [T,h,w]    False where no vector (intra block, I-frame)
  frame_types   uint8   [T]        ASCII I / P / B per display frame
  iframes       uint8   [K,H',W',3] decoded I-frames, RGB, short side resized
  iframe_index  int64   [K]        display index of each I-frame
  grid          int                cell size px (h = ceil(H/grid))
  fps           float              frames per second
  size          int     [2]        source (H, W) px
  meta          str                JSON: method (resolved|raw), codec, profile,
                                   frames lost, warnings, mvmae version
"""


class _ClickHandler(logging.Handler):
    """Log records as 'level: message' lines on the current stderr (click's, under CliRunner)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(LevelFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _configure_logging(level: int) -> None:
    """Route mvmae's log records to stderr at ``level`` on every invocation (idempotent)."""
    for handler in [h for h in log.handlers if isinstance(h, _ClickHandler)]:
        log.removeHandler(handler)
    log.addHandler(_ClickHandler())
    log.setLevel(level)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def handle_errors(func):
    """Report expected failures as one line on stderr and exit 1; tracebacks only with --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from mvmae.extract.errors import VideoError
        from mvmae.files import WriteError
        from mvmae.shards.job import JobError
        from mvmae.shards.sample import SampleError
        from mvmae.shards.stream import ShardError
        from mvmae.shards.videolist import VideoListError

        ctx = click.get_current_context()
        debug = (ctx.find_root().obj or {}).get("debug", False)
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (VideoError, JobError, VideoListError, ShardError, SampleError, WriteError) as exc:
            if debug:
                raise
            _fail(str(exc))
        except (OSError, ValueError) as exc:
            if debug:
                raise
            _fail(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # anything else is a bug: say so, keep the traceback behind --debug
            if debug:
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (run `mvmae --debug ...` for the traceback)")
        sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mvmae")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int) -> None:
    """mvmae: compressed-domain action recognition from H.264 motion vectors.

    \b
    Typical use:
      mvmae probe clips/*.mp4                  check the streams first
      mvmae extract video clip.mp4 --out c.npz one video to the export schema
    """
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose else logging.WARNING
    _configure_logging(level)


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per video (JSON Lines).")
@handle_errors
def probe(videos: tuple[Path, ...], as_json: bool) -> None:
    """Pre-flight check of H.264 videos, read from the bitstream (no decoding).

    For each VIDEO: container, codec, profile and level, size, fps, frame count, I/P/B counts,
    B-frames kept as references, GOP lengths, longest run of B-frames, reference frames the
    stream may use (SPS max_num_ref_frames) and duration. Videos that cannot be read are
    reported with the reason and make the exit status 1.
    """
    from mvmae.extract.errors import VideoError
    from mvmae.extract.probe import probe_video, summarize_gops

    failed = 0
    for path in videos:
        try:
            report = probe_video(path)
        except VideoError as exc:
            failed += 1
            if as_json:
                click.echo(json.dumps({"path": str(path), "error": exc.reason, "code": exc.code}))
            else:
                _fail(str(exc))
            continue
        if as_json:
            click.echo(json.dumps(report.to_dict()))
            continue
        r = report
        click.echo(f"{r.path}\n"
                   f"  container  {r.container}, {r.codec} {r.profile} level {r.level:g}\n"
                   f"  size       {r.width}x{r.height} px, {r.fps:g} fps, {r.duration_s:g} s\n"
                   f"  frames     {r.num_frames}: {r.num_i} I, {r.num_p} P, {r.num_b} B "
                   f"({r.num_reference_b} B used as references)\n"
                   f"  GOPs       {len(r.gop_lengths)}, lengths {summarize_gops(r.gop_lengths)}\n"
                   f"  B-run      longest {r.longest_b_run}\n"
                   f"  references up to {r.max_num_ref_frames} per block (SPS)"
                   + (f"\n  damaged    {r.num_unparsed_packets} packets with unreadable headers"
                      if r.num_unparsed_packets else "")
                   + (f"\n  damaged    {r.container_error}: extraction keeps the frames before"
                      if r.container_error else ""))
    if failed:
        sys.exit(1)


def _check_codes_help() -> str:
    """The epilog of ``mvmae check --help``: every problem code by severity, from check_codes."""
    from mvmae.shards.check_codes import CODES, ERROR, WARNING

    parts = []
    for severity, title in [(ERROR, "Problem codes (stable; in the report and the table). Errors make "
                                    "the exit status 1:"),
                            (WARNING, "Warnings (the video extracts and trains; exit status 0 unless "
                                      "--strict):")]:
        lines = ["\b", title]
        for code, (default, meaning) in CODES.items():
            if default == severity:
                lines += textwrap.wrap(meaning, 96, initial_indent=f"  {code:<25} ",
                                       subsequent_indent=" " * 28)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


class _CheckDefault(click.Option):
    """A ``mvmae check`` option whose default is CheckConfig's ``field`` (imported only when the
    command runs or shows its help, so that other commands start fast)."""

    def __init__(self, *args, field: str | None = None, **kwargs) -> None:
        super().__init__(*args, show_default=True, **kwargs)
        self.field = field or self.name

    def get_default(self, ctx: click.Context, call: bool = True):
        from mvmae.shards.check import CheckConfig

        return getattr(CheckConfig, self.field)


@main.command("check", epilog=_check_codes_help())
@click.argument("input_path", metavar="LIST", type=click.Path(path_type=Path))
@click.option("--classes", "classes", type=click.Path(path_type=Path, dir_okay=False),
              help="Existing class list (classes.json of a previous job, or one name per line): "
                   "labels outside it are errors.")
@click.option("--clip-frames", cls=_CheckDefault, type=click.IntRange(min=1),
              help="Frames per training clip (the reader's default).")
@click.option("--stride", cls=_CheckDefault, type=click.IntRange(min=1),
              help="Display frames between clip frames.")
@click.option("--min-frames", type=click.IntRange(min=0), default=0,
              help="Frames a video needs [default: (clip-frames - 1) * stride + 1].")
@click.option("--max-seconds", cls=_CheckDefault, type=click.FloatRange(min=0),
              help="extract run's --max-seconds: longer videos are reported as long_video (0: never).")
@click.option("--min-class-videos", type=click.IntRange(min=0), default=0,
              help="Classes with fewer usable videos are class_small [default: a tenth of the median, at least 2].")
@click.option("--workers", cls=_CheckDefault, type=click.IntRange(min=0),
              help="Probing processes, supervised: a file that crashes or hangs its process "
                   "costs that file only, see --timeout (0: probe in this process, unprotected).")
@click.option("--timeout", cls=_CheckDefault, type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS",
              help="Time one file's probe may take with --workers 2 or more; past it the process "
                   "is killed and the file reported 'timeout'.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the machine-readable report: .jsonl (a record per video, then the summary) or .json.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the table.")
@click.option("--allow", "allow", multiple=True, metavar="CODE",
              help="Report this error code as a warning (repeatable), e.g. --allow duplicate_content.")
@click.option("--strict", is_flag=True, help="Every warning is an error.")
@click.option("--examples", cls=_CheckDefault, field="max_examples", type=click.IntRange(min=0),
              help="Example paths per problem in the table.")
@handle_errors
def check_cmd(input_path: Path, classes: Path | None, clip_frames: int, stride: int, min_frames: int,
              max_seconds: float, min_class_videos: int, workers: int, timeout: float,
              report_path: Path | None, as_json: bool, allow: tuple[str, ...], strict: bool,
              examples: int) -> None:
    """Pre-flight check of a whole dataset before a long job: exit status 0 when it is fit.

    LIST is what `mvmae extract run` takes (a 'path label' list file or a folder of class
    subfolders). Every video is probed from the bitstream (the whole file demuxed and its slice
    headers read, no decoding: about 100-300 MB/s, e.g. 3 ms for a 10 s 640x272 clip, 12 ms for
    5 s of 720p) for missing or unreadable files, containers without H.264 video, videos shorter than the clip
    or oddly made; the listing for duplicates (same path, same content), labels outside --classes
    and classes with few videos. Prints a table (problem, count, example paths) and exits 1 if any
    error is found, so it can gate a job: `mvmae check train.txt && sbatch extract.sh`.
    """
    from tqdm import tqdm

    from mvmae.shards.check import CheckConfig, check_dataset, format_summary

    try:
        config = CheckConfig(input=input_path, classes=classes, clip_frames=clip_frames, stride=stride,
                             min_frames=min_frames, max_seconds=max_seconds, workers=workers,
                             timeout=timeout,
                             min_class_videos=min_class_videos, allow=allow, strict=strict,
                             max_examples=examples)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if report_path is not None and report_path.suffix not in (".json", ".jsonl"):
        raise click.BadParameter("a report is .json or .jsonl", param_hint="--report")
    bar = tqdm(unit="video", desc="check", dynamic_ncols=True, delay=0.5)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # update, not refresh: keeps tqdm's delay and rate limit

    try:
        report = check_dataset(config, progress)
    finally:
        bar.close()
    if report_path is not None:
        report.write(report_path)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo("\n".join(format_summary(report.summary)))
        if report_path is not None:
            click.echo(f"report -> {report_path}")
    if not report.passed:
        sys.exit(1)


@main.group()
def extract() -> None:
    """Extract motion-vector fields and I-frames from H.264 videos."""


@extract.command("video", epilog=EXPORT_SCHEMA_HELP)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Output .npz in the export schema (written atomically).")
@click.option("--grid", type=click.Choice(["4", "8", "16"]), default="8", show_default=True,
              help="MV cell size in px.")
@click.option("--iframe-size", type=click.IntRange(min=0), default=256, show_default=True,
              help="Resize I-frames so their short side is at most this (px, aspect kept); 0 keeps the source size.")
@click.option("--raw", is_flag=True,
              help="Keep FFmpeg's vectors as exported (px to whichever reference, unresolved); meta says method=raw.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Decoder slice threads (output stays deterministic; frame threading is never used).")
@click.option("--skip-loop-filter", type=click.Choice(["none", "nokey"]), default="none", show_default=True,
              help="'nokey' skips deblocking on non-key frames: faster at 720p+, I-frames and raw "
                   "vectors unchanged, ~2% of resolved cells may pick another reference.")
@handle_errors
def video(path: Path, out: Path, grid: str, iframe_size: int, raw: bool, threads: int,
          skip_loop_filter: str) -> None:
    """Extract one H.264 video into an .npz in the export schema.

    Motion vectors are resolved to their real reference picture (matching each block against the
    candidate references in the decoded picture buffer) and normalised to px per display frame,
    for P- and B-frames alike. Cells without a vector are marked invalid.
    """
    from mvmae.extract.decoder import ExtractConfig
    from mvmae.extract.export import save_export
    from mvmae.extract.video import extract_video

    config = ExtractConfig(grid=int(grid), iframe_short_side=iframe_size, raw=raw, threads=threads,
                           skip_loop_filter=skip_loop_filter)
    fields = extract_video(path, config)
    save_export(out, fields)
    types = bytes(fields.frame_types).decode()
    valid_ratio = float(fields.valid.mean()) if fields.valid.size else 0.0
    h, w = fields.valid.shape[1:]
    click.echo(f"{path}: {fields.num_frames} frames ({types.count('I')} I, {types.count('P')} P, "
               f"{types.count('B')} B), grid {fields.grid} px ({h}x{w} cells, "
               f"{valid_ratio:.0%} valid), {len(fields.iframe_index)} I-frames, "
               f"method {fields.meta['method']} -> {out}")


def _parse_part(value: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected i/N (e.g. 0/4), got {value!r}") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"need 0 <= i < N, got {value!r}")
    return i, n


@extract.command("run")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, exists=True))
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--split", default="train", show_default=True, help="Shard name prefix: <split>-000000.tar.")
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
              help="I-frame short side in px (never upscaled; 0 keeps the source size).")
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
def run(input_path: Path, out_dir: Path, split: str, workers: int, shard_size: int, part: str,
        max_seconds: float, grid: str, iframe_size: int, raw: bool, video_timeout: float,
        retries: int) -> None:
    """Extract a dataset into webdataset shards (resumable, partitionable).

    \b
    INPUT is either
      - a list file of 'path label' lines (VideoMAE / MV-MAE train_split.txt style;
        label = class index or class name; paths relative to the list file), or
      - a folder with one subfolder per class.
    OUT_DIR receives <split>-NNNNNN.tar shards, a stats .json beside each, <split>-manifest.jsonl
    (every video: ok/failed, reason, shard, keys), classes.json and <split>-job.json.

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

    from mvmae.extract.decoder import ExtractConfig
    from mvmae.shards.job import JobConfig, run_job

    part_index, num_parts = _parse_part(part)
    config = JobConfig(input=input_path, out_dir=out_dir, split=split, shard_size=shard_size,
                       workers=workers, part_index=part_index, num_parts=num_parts,
                       max_seconds=max_seconds, retries=retries, video_timeout=video_timeout,
                       extract=ExtractConfig(grid=int(grid), iframe_short_side=iframe_size, raw=raw))
    bar = tqdm(unit="video", desc=f"extract {split}", dynamic_ncols=True, delay=0.5)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # may go back: a shard redone after its worker was lost

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
               f"{summary.bytes / 1e6:.1f} MB, {summary.seconds:.1f} s -> {out_dir}")
    for code, n in sorted(summary.failures_by_code.items(), key=lambda kv: -kv[1]):
        click.echo(f"  failed: {n:6d}  {code}")
    if summary.shards_failed:
        raise click.ClickException(f"{len(summary.shards_failed)} shard(s) failed after retries "
                                   f"({', '.join(summary.shards_failed[:5])}); run the command again")


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--classes", "num_classes", type=click.IntRange(2, 8), default=4, show_default=True,
              help="Number of motion classes (walk_right, walk_left, walk_down, walk_up, circle_cw, "
                   "circle_ccw, pace_horizontal, pace_vertical: the first N).")
@click.option("--clips-per-class", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--size", default="128x160", show_default=True, help="Frame size HxW in px (even).")
@click.option("--frames", "num_frames", type=click.IntRange(min=2), default=48, show_default=True,
              help="Frames per clip.")
@click.option("--val-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.25, show_default=True,
              help="Share of each class's clips listed in val.txt.")
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def synth(out_dir: Path, num_classes: int, clips_per_class: int, size: str, num_frames: int,
          val_ratio: float, seed: int) -> None:
    """Write a synthetic action dataset whose classes differ by motion alone.

    Top-down textured actors move in class-specific patterns over textured ground under a
    drifting camera, encoded as real H.264 (libx264, 2 B-frames, 3 references, GOP 24). Every clip
    draws a new actor texture, ground, position, speed and drift, so one frame cannot tell the
    classes apart. Writes OUT_DIR/videos/<class>/*.mp4, train.txt and val.txt ('path label' lines)
    and classes.txt. Deterministic for a seed.
    """
    from tqdm import tqdm

    from mvmae.synth import SynthConfig, make_dataset

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW, got {size!r}", param_hint="--size") from None
    cfg = SynthConfig(num_classes=num_classes, clips_per_class=clips_per_class, size=(h, w),
                      num_frames=num_frames, val_ratio=val_ratio, seed=seed)
    with tqdm(total=num_classes * clips_per_class, unit="clip", desc="synth") as bar:
        lists = make_dataset(out_dir, cfg, lambda done, total: bar.update(done - bar.n))
    click.echo(f"{num_classes * clips_per_class} clips of {num_classes} classes -> {out_dir} "
               f"(lists: {lists['train'].name}, {lists['val'].name})")


SHARD_URLS_HELP = """\b
URL forms (as webdataset reads them; several URLs may be given):
  shards/train-000000.tar                  a local file (or file:///abs/path.tar)
  'shards/train-{000000..000127}.tar'      a brace pattern (quote it for the shell)
  https://host/data/train-000000.tar       fetched with curl
  'pipe:aws s3 cp s3://bucket/train-000000.tar -'   a command's stdout
A remote shard (anything but a local file) whose read fails (HTTP error, dropped or stalled
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
                     default=defaults.connect_timeout_s, show_default=True, help="Seconds to connect (curl)."),
        click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=defaults.max_time_s,
                     show_default=True, help="Seconds one shard transfer may take in all."),
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
    """Read shards back: counts, integrity checks, one sample to .npz."""


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


@main.command()
@click.argument("shards", nargs=-1, required=True)
@click.option("--size", "size", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Number of codes K; code 0 is reserved for static (near-zero) motion.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Output codebook .npz.")
@click.option("--token", type=click.Choice(["tubelet", "vector"]), default="tubelet", show_default=True,
              help="Cluster whole tubelet vectors, or single (dx, dy) vectors as published MV-MAE.")
@click.option("--frames", "num_frames", type=click.IntRange(min=1), default=16, show_default=True,
              help="Frames per clip (T).")
@click.option("--mv-size", type=click.IntRange(min=1), default=14, show_default=True,
              help="Cells per side of a clip's MV field.")
@click.option("--tubelet", default="2x1", show_default=True,
              help="Token size: frames x cells (2x1: 2 frames of one cell).")
@click.option("--camera", type=click.Choice(["median", "affine", "none"]), default="median",
              show_default=True, help="Camera-motion compensation before tokenizing.")
@click.option("--scale-px", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="px/frame that map to 1.0 in token vectors.")
@click.option("--static-threshold", type=click.FloatRange(min=0), default=0.125, show_default=True,
              help="Mean token vector length (normalised) below which a token is static (code 0).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Tokens sampled from the shards for k-means.")
@click.option("--clips-per-video", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def codebook(shards: tuple[str, ...], size: int, out: Path, token: str, num_frames: int, mv_size: int,
             tubelet: str, camera: str, scale_px: float, static_threshold: float, max_tokens: int,
             clips_per_video: int, batch_size: int, workers: int, seed: int) -> None:
    """Learn a discrete codebook of motion tokens from SHARDS (URLs or brace patterns).

    Clips are cut from every sample, camera motion is removed, vectors are normalised and cut
    into tubelet tokens (the token spec is saved in the codebook, so pretraining tokenizes the
    same way); codes 1..K-1 come from mini-batch k-means over the moving tokens, code 0 is static.
    Prints code usage (perplexity, dead codes) and the quantization error. Deterministic for a seed.
    """
    from tqdm import tqdm

    from mvmae.train.codebook import CodebookConfig, build_codebook
    from mvmae.train.tokenizer import TokenSpec

    t, p = _parse_tubelet(tubelet)
    spec = TokenSpec(num_frames=num_frames, mv_size=mv_size, tubelet_frames=t, tubelet_cells=p,
                     camera=camera, scale_px=scale_px)
    config = CodebookConfig(size=size, token=token, static_threshold=static_threshold,
                            max_tokens=max_tokens, seed=seed)
    book = build_codebook(list(shards), spec, config, clips_per_video, batch_size, workers,
                          lambda it: tqdm(it, unit="batch", desc="tokens"))
    book.save(out)
    s = book.stats
    click.echo(f"codebook of {book.size} codes from {s['num_tokens']} tokens (dim {book.token_dim}): "
               f"perplexity {s['perplexity']:.1f}, dead codes {s['dead_codes']}, static "
               f"{s['static_ratio']:.1%}, quantization error {s['quantization_error']:.3f} -> {out}")


def _parse_tubelet(value: str) -> tuple[int, int]:
    try:
        t, p = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected FRAMESxCELLS (e.g. 2x1), got {value!r}") from None
    return t, p


def _overrides(**values) -> dict:
    """CLI values that were given (None means: keep the YAML or default)."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML with any PretrainConfig field; command-line flags override it.")
@click.option("--train", "train", multiple=True, help="Shard URL or brace pattern (repeatable).")
@click.option("--codebook", "codebook_path", help="Codebook .npz from `mvmae codebook`.")
@click.option("--masking", type=click.Choice(["random", "tube", "mgm", "mofo", "videoms"]),
              help="Masking strategy [default: mgm].")
@click.option("--mask-ratio", type=float, help="Share of tokens masked [default: 0.9].")
@click.option("--model-size", type=click.Choice(["micro", "tiny", "small", "base"]),
              help="Motion encoder size [default: small = 384-d, 12 blocks, 6 heads].")
@click.option("--epochs", type=int, help="Passes over the shards [default: 400].")
@click.option("--warmup-epochs", type=int, help="Linear warmup [default: 20].")
@click.option("--steps-per-epoch", type=int, help="Batches per epoch from resampled shards (0: one pass).")
@click.option("--batch-size", type=int, help="Clips per step and process [default: 32].")
@click.option("--accum-steps", type=int, help="Gradient accumulation steps [default: 1].")
@click.option("--lr", type=float, help="Peak learning rate [default: 3e-4].")
@click.option("--workers", type=int, help="DataLoader workers per process [default: 2].")
@click.option("--predict", type=click.Choice(["ids", "vectors"]),
              help="Targets: codebook ids (cross-entropy) or token vectors (MSE) [default: ids].")
@click.option("--seed", type=int, help="Seed of data order, masks and init [default: 0].")
@click.option("--out", "out", help="Output folder: checkpoints, config.yaml, metrics.jsonl, tensorboard/.")
@click.option("--resume", is_flag=True, default=None,
              help="Continue from OUT/last.pt (from the start if there is none yet) with the same config: "
                   "--config OUT/config.yaml --resume.")
@handle_errors
def pretrain(config_path: Path | None, train: tuple[str, ...], codebook_path: str | None, **flags) -> None:
    """Masked motion pretraining of the Motion encoder on shards.

    \b
    Example:
      mvmae pretrain --train 'shards/train-{000000..000009}.tar' --codebook codebook.npz \\
          --masking mgm --epochs 100 --out runs/pretrain
    Multi-GPU / multi-process: torchrun --nproc_per_node=N -m mvmae.cli pretrain ...
    """
    from mvmae.train.config import load_config
    from mvmae.train.pretrain import PretrainConfig, Pretrainer

    overrides = _overrides(train=list(train) or None, codebook=codebook_path, **flags)
    cfg = load_config(PretrainConfig, config_path, overrides)
    if not cfg.train or not cfg.codebook:
        raise click.UsageError("--train and --codebook are required (on the command line or in --config)")
    metrics = Pretrainer(cfg).run()
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    click.echo(f"pretraining done: {summary} -> {cfg.out}")



@main.command("train")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML with any FinetuneConfig field (nested: model.*, tokens.*); flags override it.")
@click.option("--train", "train", multiple=True, help="Training shard URL or brace pattern (repeatable).")
@click.option("--val", "val", multiple=True, help="Validation shard URL or brace pattern (repeatable).")
@click.option("--out", "out", help="Output folder: checkpoints, config.yaml, metrics.jsonl, tensorboard/.")
@click.option("--classes", help="classes.json of the extraction job [default: beside the first train shard].")
@click.option("--pretrained", help="Motion encoder checkpoint from `mvmae pretrain` (else from scratch).")
@click.option("--init", "init", help="Start from a classifier checkpoint's weights (nothing else).")
@click.option("--resume", is_flag=True, default=None,
              help="Continue from OUT/last.pt, any phase (from the start if there is none yet), with the same "
                   "config and classes: --config OUT/config.yaml --resume.")
@click.option("--inputs", type=click.Choice(["mv", "iframe", "both"]), help="Paths to use [default: both].")
@click.option("--context-model", help="timm backbone for I-frames [default: vit_base_patch16_224].")
@click.option("--context-weights", help="Local weights file for the context backbone (nothing is downloaded).")
@click.option("--motion-size", type=click.Choice(["micro", "tiny", "small", "base"]),
              help="Motion encoder size when not pretrained [default: small].")
@click.option("--fusion", type=click.Choice(["concat", "afm"]), help="Feature fusion [default: concat].")
@click.option("--dptam/--no-dptam", default=None, help="Double-pooling temporal attention on motion features.")
@click.option("--motion-pool", type=click.Choice(["mean", "motion"]),
              help="Pool motion tokens by plain mean (published) or motion-weighted mean [default: mean].")
@click.option("--segments", type=int, help="Segments per clip [default: 8].")
@click.option("--dim", type=int, help="Temporal transformer width [default: 512].")
@click.option("--segment-frames", type=int, help="MV frames per segment when not pretrained [default: 16].")
@click.option("--mv-size", type=int, help="MV cells per side when not pretrained [default: 14].")
@click.option("--iframe-size", type=int, help="I-frame size px when not pretrained [default: 224].")
@click.option("--epochs", type=int, help="Total epochs [default: 51: phase 1 = 0-5, phase 2 = 6-50].")
@click.option("--phase1-epochs", type=int, help="Epochs with both encoders frozen [default: 6].")
@click.option("--unfreeze-blocks", type=int, help="Top encoder blocks trained in phase 2 [default: 2].")
@click.option("--encoder-lr-scale", type=float, help="LR of unfrozen encoder blocks / LR [default: 0.1].")
@click.option("--lr", type=float, help="LR of the new parts [default: 5e-5].")
@click.option("--batch-size", type=int, help="Clips per step and process [default: 8].")
@click.option("--accum-steps", type=int, help="Gradient accumulation [default: 1].")
@click.option("--workers", type=int, help="DataLoader workers per process [default: 2].")
@click.option("--label-smoothing", type=float, help="[default: 0.1]")
@click.option("--ema", type=float, help="EMA decay of the weights (0: off) [default: 0].")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model.")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast on CUDA [default: on].")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms (reproducible resume).")
@click.option("--steps-per-epoch", type=int, help="Batches per epoch from resampled shards (0: one pass).")
@click.option("--flip-prob", type=float, help="Horizontal flips (negate dx): 0 for left/right classes [default: 0.5].")
@click.option("--crop-area", type=(float, float), default=None, help="Random crop area range [default: 0.35 1.0].")
@click.option("--seed", type=int, help="[default: 0]")
@handle_errors
def train_cmd(config_path: Path | None, train: tuple[str, ...], val: tuple[str, ...], compile_, **flags) -> None:
    """Fine-tune the MV-MAE classifier in two phases, validating after every epoch.

    \b
    Phase 1 (epochs 0-5): Context and Motion encoders frozen; temporal transformer, fusion and
    head train. Phase 2 (epochs 6-50): the top 2 blocks of each encoder train too, at 10x lower LR.
    Validation logs top-1/5, macro-F1, macro precision and recall, mean class accuracy;
    best.pt follows macro-F1.
    \b
    Example:
      mvmae train --train 'sh/train-{000000..000099}.tar' --val 'sh/val-{000000..000009}.tar' \\
          --pretrained runs/pretrain/last.pt --out runs/train
    """
    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.train.config import load_config
    from mvmae.train.finetune import FinetuneConfig, Finetuner

    nested = {"inputs": "model.inputs", "context_model": "model.context_model",
              "context_weights": "model.context_weights", "motion_size": "model.motion_size",
              "fusion": "model.fusion", "dptam": "model.dptam", "motion_pool": "model.motion_pool", "segments": "model.num_segments",
              "dim": "model.dim", "segment_frames": "tokens.num_frames", "mv_size": "tokens.mv_size",
              "iframe_size": "tokens.iframe_size"}
    values = {nested.get(k, k): v for k, v in flags.items()}
    overrides = _overrides(train=list(train) or None, val=list(val) or None, compile=compile_, **values)
    cfg = load_config(FinetuneConfig, config_path, overrides)
    if not cfg.train:
        raise click.UsageError("--train is required (on the command line or in --config)")
    metrics = Finetuner(cfg, StreamingMetrics).run()
    if metrics:
        from mvmae.eval.report import format_table

        click.echo(format_table(metrics))
    click.echo(f"training done -> {cfg.out} (best.pt by {cfg.best_metric}, last.pt, metrics.jsonl)")



def _echo_views_table(metrics: dict) -> None:
    """The headline metrics of ``mvmae eval``'s result, a column per view setting."""
    keys = ("top1", "top5", "macro_f1", "macro_precision", "macro_recall", "mean_class_acc")
    views = [v for v in ("single_view", "multi_view") if f"{v}_top1" in metrics]
    click.echo(f"{'metric':<16}" + "".join(f"{v.replace('_', '-'):>13}" for v in views))
    for key in keys:
        click.echo(f"{key:<16}" + "".join(f"{metrics[f'{v}_{key}']:>13.2%}" for v in views))


@main.command("eval")
@click.option("--ckpt", "ckpt", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Classifier checkpoint from `mvmae train` (best.pt or last.pt).")
@click.option("--data", "data", multiple=True, required=True, help="Shard URL or brace pattern (repeatable).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Report folder: metrics.json, per_class.csv, confusion_matrix.csv/.png, predictions.")
@click.option("--clips", type=click.IntRange(min=1), default=1, show_default=True,
              help="Evenly spaced clips per video (multi-view).")
@click.option("--crops", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: centre crop; 2: centre crop and the full frame.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@handle_errors
def eval_cmd(ckpt: Path, data: tuple[str, ...], out: Path, clips: int, crops: int, batch_size: int,
             workers: int, device: str) -> None:
    """Evaluate a classifier: top-1/5, macro F1, precision and recall, mean class accuracy.

    Writes OUT/metrics.json (single-view and, with --clips/--crops > 1, multi-view numbers),
    per_class.csv, confusion_matrix.csv and .png, predictions.csv and per_video.jsonl (scores
    per video, for late fusion).
    """
    from mvmae.eval.evaluate import EvalConfig, evaluate

    metrics = evaluate(EvalConfig(ckpt=str(ckpt), data=list(data), out=str(out), clips=clips,
                                  crops=crops, batch_size=batch_size, workers=workers, device=device))
    _echo_views_table(metrics)
    click.echo(f"{metrics['num_samples']} videos, {metrics['views']} view(s) per video")
    click.echo(f"report -> {out} (metrics.json, confusion_matrix.png, per_class.csv, predictions.csv)")



@main.command()
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), default="mvmae-demo",
              show_default=True, help="Folder for the dataset, shards, checkpoints and reports.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Extraction processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def demo(out: Path, workers: int, seed: int) -> None:
    """The whole pipeline on a synthetic dataset, on the CPU (a few minutes on 2 cores).

    synth -> extract run -> codebook -> pretrain -> train -> eval, then the metrics table and
    where the plots are. Running it again with the same --out resumes where it stopped.
    """
    import time

    from mvmae.demo import DemoConfig, run_demo

    t0 = time.monotonic()
    metrics = run_demo(DemoConfig(out=out, workers=workers, seed=seed),
                       lambda name: click.secho(f"== {name}", bold=True, err=True))
    click.echo()
    _echo_views_table(metrics)
    click.echo(f"\n{metrics['num_samples']} validation videos; done in {time.monotonic() - t0:.0f} s")
    click.echo(f"plots: {out / 'eval' / 'confusion_matrix.png'}, {out / 'eval' / 'training_curves.png'}")
    click.echo(f"report: {out / 'eval' / 'metrics.json'}; checkpoints: {out / 'train'}")


if __name__ == "__main__":
    main()
