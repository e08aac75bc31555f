"""``mvmae probe``, ``check``, ``extract video`` and ``synth``: from videos to shards (``extract run``:
:mod:`mvmae.cli.extract_run`)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import click

from mvmae.cli.base import EXPORT_SCHEMA_HELP, fail, handle_errors, main


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per video (JSON Lines).")
@handle_errors
def probe(videos: tuple[Path, ...], as_json: bool) -> None:
    """Pre-flight check of H.264 videos, read from the bitstream (only the first frame decoded).

    For each VIDEO: container, codec, profile and level, size (as coded), fps, frame count, I/P/B
    counts, B-frames kept as references, GOP lengths, longest run of B-frames, reference frames the
    stream may use (SPS max_num_ref_frames), duration; and when they apply, the display rotation
    (extraction turns the video upright), the pictures an edit list hides, and whether no I-frame
    is shown (extraction then uses the first decoded frame as the context frame). Videos that cannot be read are
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
                fail(str(exc))
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
                   + (f"\n  rotation   {r.rotation} degrees counterclockwise for display: extracted upright "
                      f"({r.height if r.rotation % 180 else r.width}x{r.width if r.rotation % 180 else r.height} px)"
                      if r.rotation else "")
                   + (f"\n  hidden     {r.num_hidden} pictures the edit list does not show"
                      if r.num_hidden else "")
                   + (f"\n  no I-frame is shown: the first decoded frame is the context frame"
                      if r.num_frames and not r.num_i_shown and r.num_p + r.num_b else "")
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
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False),
              help="Output .npz in the export schema (written atomically).")
@click.option("--show", "show", type=click.Path(path_type=Path, dir_okay=False),
              help="Also (or only) draw the fields as arrows into this .png, as `mvmae shards show`.")
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
                   "vectors unchanged, ~2% of resolved cells may pick another reference. --raw "
                   "always uses 'nokey' (its output is the same bytes).")
@handle_errors
def video(path: Path, out: Path | None, show: Path | None, grid: str, iframe_size: int, raw: bool, threads: int,
          skip_loop_filter: str) -> None:
    """Extract one H.264 video into an .npz in the export schema.

    Motion vectors are resolved to their real reference picture (matching each block against the
    candidate references in the decoded picture buffer) and normalised to px per display frame,
    for P- and B-frames alike. Cells without a vector are marked invalid. --show draws them (the
    first I-frame, a P- and a B-frame field; see `mvmae shards show --help`).
    """
    from mvmae.extract.config import ExtractConfig
    from mvmae.extract.export import save_export
    from mvmae.extract.video import extract_video

    if out is None and show is None:
        raise click.UsageError("give --out FILE.npz, --show FILE.png or both")
    config = ExtractConfig(grid=int(grid), iframe_short_side=iframe_size, raw=raw, threads=threads,
                           skip_loop_filter=skip_loop_filter)
    fields = extract_video(path, config)
    if out is not None:
        save_export(out, fields)
    if show is not None:
        from mvmae.extract.figure import plot_motion

        plot_motion(fields, show, title=f"{path.name} ({fields.meta['method']} vectors)")
    types = bytes(fields.frame_types).decode()
    valid_ratio = float(fields.valid.mean()) if fields.valid.size else 0.0
    h, w = fields.valid.shape[1:]
    click.echo(f"{path}: {fields.num_frames} frames ({types.count('I')} I, {types.count('P')} P, "
               f"{types.count('B')} B), grid {fields.grid} px ({h}x{w} cells, "
               f"{valid_ratio:.0%} valid), {len(fields.iframe_index)} I-frames, "
               f"method {fields.meta['method']} -> {', '.join(str(p) for p in (out, show) if p is not None)}")


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--preset", type=click.Choice(["basic", "trajectories"]), default="basic",
              show_default=True,
              help="basic: 8 classes told apart by the direction of motion (walk_right, walk_left, "
                   "walk_down, walk_up, circle_cw, circle_ccw, pace_horizontal, pace_vertical). "
                   "trajectories: 12 path shapes (turn_left, turn_right, circle_ccw, circle_cw, "
                   "straight, u_turn, zigzag, stop_and_go, back_and_forth, s_curve, figure_eight, "
                   "loop) at a random orientation, speed and start time, over a real-photo ground "
                   "with distractors: only how the motion evolves over time tells them apart.")
@click.option("--classes", "num_classes", type=click.IntRange(2, 12), default=None,
              help="Number of classes: the first N of the preset's (basic: 2-8, default 4; "
                   "trajectories: 2-12, default 12).")
@click.option("--clips-per-class", type=click.IntRange(min=1), default=8, show_default=True,
              help="Labelled clips per class (split into train, val and test).")
@click.option("--size", default=None,
              help="Frame size HxW in px (even). [default: 128x160]")
@click.option("--frames", "num_frames", type=click.IntRange(min=2), default=None,
              help="Frames per clip. [default: 48 basic, 64 trajectories]")
@click.option("--val-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.25, show_default=True,
              help="Share of each class's clips listed in val.txt.")
@click.option("--test-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Share of each class's clips listed in test.txt (written when > 0): data for "
                   "reporting that no choice was tuned on.")
@click.option("--unlabelled", "num_unlabelled", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Clips of an extra pool for pretraining, unlabelled/*.mp4 listed in "
                   "unlabelled.txt; drawn from the same classes on a random stream of its own, so "
                   "the labelled clips do not change with it. The list carries each clip's true "
                   "class (list files need a label); pretraining ignores it.")
@click.option("--gop", type=click.IntRange(min=1), default=None,
              help="An IDR frame every N frames. [default: 24 basic; 250 trajectories, one "
                   "I-frame per clip, so that I-frames do not show the path]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", "num_workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes rendering clips (trajectories only; the output is the same).")
@handle_errors
def synth(out_dir: Path, preset: str, num_classes: int | None, clips_per_class: int,
          size: str | None, num_frames: int | None, val_ratio: float, test_ratio: float,
          num_unlabelled: int, gop: int | None, seed: int, num_workers: int) -> None:
    """Write a synthetic action dataset whose classes differ by motion alone.

    Top-down textured actors move in class-specific patterns over textured ground under a
    drifting camera, encoded as real H.264 (libx264, 2 B-frames, 3 references, fixed GOP). Every clip
    draws a new actor texture, ground, position, speed and drift, so one frame cannot tell the
    classes apart. Writes OUT_DIR/videos/<class>/*.mp4, train.txt, val.txt, test.txt (with
    --test-ratio), unlabelled.txt (with --unlabelled; 'path label' lines), classes.txt and
    synth.json (the resolved config). Deterministic for a seed. A horizontal flip swaps
    left/right and cw/ccw classes: train with --flip-prob 0.
    """
    from tqdm import tqdm

    from mvmae.synth import SynthConfig, make_dataset

    hw = None
    if size is not None:
        try:
            hw = tuple(int(v) for v in size.lower().split("x"))
        except ValueError:
            hw = ()
        if len(hw) != 2:
            raise click.BadParameter(f"expected HxW, got {size!r}", param_hint="--size")
    try:
        cfg = SynthConfig(preset=preset, num_classes=num_classes, clips_per_class=clips_per_class,
                          size=hw, num_frames=num_frames, val_ratio=val_ratio,
                          test_ratio=test_ratio, num_unlabelled=num_unlabelled, gop=gop,
                          seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    total = cfg.num_classes * clips_per_class + num_unlabelled
    with tqdm(total=total, unit="clip", desc="synth") as bar:
        lists = make_dataset(out_dir, cfg, lambda done, total: bar.update(done - bar.n),
                             num_workers=num_workers)
    names = ", ".join(p.name for key, p in lists.items() if key != "classes")
    click.echo(f"{total} clips of {cfg.num_classes} {preset} classes -> {out_dir} (lists: {names})")
