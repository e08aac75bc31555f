"""``mvmae predict``: a trained classifier on raw videos (``mvmae.eval.predict``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mvmae.cli.base import fail, handle_errors, main


@main.command()
@click.argument("videos", metavar="VIDEO...", nargs=-1, required=True)
@click.option("--ckpt", "ckpt", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Classifier checkpoint from `mvmae train` (best.pt or last.pt).")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes shown per video.")
@click.option("--clips", type=click.IntRange(min=1), default=1, show_default=True,
              help="Evenly spaced clips per video (multi-view), as `mvmae eval`.")
@click.option("--crops", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: centre crop; 2: centre crop and the full frame, as `mvmae eval`.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per video (JSON Lines; with -, always so).")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the JSON lines to this file (atomically), errors included.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Extraction processes (0: extract in this process; - is always decoded in this process).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--grid", type=click.Choice(["4", "8", "16"]),
              help="MV cell size in px [default: the training shards', recorded in the checkpoint; else 8].")
@click.option("--iframe-size", type=click.IntRange(min=0),
              help="I-frame short side in px [default: the training shards', recorded in the checkpoint; "
                   "else 256].")
@click.option("--raw/--resolved", "raw", default=None,
              help="FFmpeg's unresolved vectors or resolved ones [default: as the training shards, recorded "
                   "in the checkpoint; else resolved].")
@click.option("--window-s", "window_s", type=click.FloatRange(min=0, min_open=True),
              help="With -: seconds per window [default: the checkpoint's clip span at the stream's frame rate].")
@click.option("--hop-s", "hop_s", type=click.FloatRange(min=0, min_open=True),
              help="With -: seconds from one window's start to the next [default: the window, no overlap].")
@click.option("--format", "stream_format", type=click.Choice(["auto", "mpegts", "h264"]), default="auto",
              show_default=True, help="With -: the stream's container (h264: an elementary stream, Annex B).")
@handle_errors
def predict(videos: tuple[str, ...], ckpt: Path, top_k: int, clips: int, crops: int, as_json: bool,
            out: Path | None, workers: int, device: str, grid: str | None, iframe_size: int | None,
            raw: bool | None, window_s: float | None, hop_s: float | None, stream_format: str) -> None:
    """Classify raw videos with a trained classifier: the top classes and their scores per video,
    or per time window of a live stream on stdin (VIDEO -).

    \b
    VIDEO: a video file, a folder (its videos, recursively) or a list file (.txt, .lst,
    .list: one path per line, relative to the list; a trailing label is ignored); or -
    alone: an H.264 stream (MPEG-TS or elementary) on stdin, predicted as it arrives.
    Examples:
      mvmae predict --ckpt runs/train/best.pt clips/*.mp4 --clips 4 --crops 2
      ffmpeg -re -i cam.mp4 -c copy -f mpegts - | mvmae predict --ckpt runs/train/best.pt -

    Each video is extracted in memory as the training shards were and read back as training read
    them (extraction options, clip config, token spec and class names from the checkpoint; MVs
    quantized and I-frames JPEG-coded as in a shard),
    over the same views as `mvmae eval`, so the two agree on shards of the same videos. A video
    that cannot be extracted is named on stderr and the others predicted; the exit status is then 1.

    \b
    With -, one JSON line per window, written as soon as the window is final:
      {"window": k, "start": s, "end": s, "top": [{"class", "index", "score"}], "views": n}
    (seconds of stream time from its first keyframe; "partial": true on a last window cut short).
    A window that overlaps a damaged stretch of the stream gets "error" (the reason) instead of
    "top"; decoding resumes at the next keyframe. The exit status is then 1.
    """
    cfg_extract = {k: v for k, v in (("grid", grid and int(grid)), ("iframe_short_side", iframe_size),
                                     ("raw", raw)) if v is not None}
    if "-" in videos:
        if len(videos) > 1 or out is not None:
            raise click.UsageError("- (a stream on stdin) comes alone and without --out (redirect stdout)")
        _predict_stream(ckpt, top_k, clips, crops, device, cfg_extract, window_s, hop_s, stream_format)
        return
    if window_s is not None or hop_s is not None:
        raise click.UsageError("--window-s and --hop-s apply to a stream on stdin (VIDEO -)")
    _predict_videos(videos, ckpt, top_k, clips, crops, as_json, out, workers, device, cfg_extract)


def _predict_videos(videos: tuple[str, ...], ckpt: Path, top_k: int, clips: int, crops: int, as_json: bool,
                    out: Path | None, workers: int, device: str, extract: dict) -> None:
    from tqdm import tqdm

    from mvmae.eval.predict import PredictConfig, expand_inputs, predict_videos
    from mvmae.files import atomic_open

    paths = expand_inputs(videos)
    if not paths:
        raise click.UsageError(f"no video found in {', '.join(videos)}")
    cfg = PredictConfig(ckpt=str(ckpt), clips=clips, crops=crops, workers=min(workers, len(paths)), device=device,
                        extract=extract)
    predictor, predictions = predict_videos(cfg, paths)
    classes = predictor.classes
    records, failed = [], 0
    # disable=None: no bar when stderr is not a terminal.
    bar = tqdm(predictions, total=len(paths), unit="video", desc="predict", disable=True if len(paths) < 2 else None)
    for p in bar:
        record = p.record(classes, top_k)
        records.append(record)
        if p.error is not None:
            failed += 1
            fail(f"{p.video}: {p.error}")
        elif as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(f"{p.video}: " + ", ".join(f"{t['class']} {t['score']:.3f}" for t in record["top"]))
    if out is not None:
        with atomic_open(out, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    if failed:
        click.echo(f"{failed} of {len(paths)} video(s) could not be predicted (named above)", err=True)
        sys.exit(1)


def _predict_stream(ckpt: Path, top_k: int, clips: int, crops: int, device: str, extract: dict,
                    window_s: float | None, hop_s: float | None, stream_format: str) -> None:
    """``predict -``: a JSON line per window of the stream on stdin, flushed as it is written."""
    from mvmae.eval.predict import PredictConfig
    from mvmae.eval.predict_stream import StreamConfig, StreamPredictor

    if sys.stdin is None or sys.stdin.isatty():
        raise click.UsageError("- reads a stream on stdin: pipe one in (ffmpeg ... -f mpegts - | mvmae predict ... -)")
    cfg = PredictConfig(ckpt=str(ckpt), clips=clips, crops=crops, workers=0, device=device, extract=extract)
    stream_cfg = StreamConfig(window_s=window_s, hop_s=hop_s, format=stream_format)
    # the raw file reads what has arrived (a buffered one would wait for its whole buffer)
    source = getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
    predictor = StreamPredictor(cfg, stream_cfg, source)
    failed = total = 0
    try:
        for p in predictor.predictions():
            total += 1
            failed += p.error is not None
            click.echo(json.dumps(p.record(predictor.classes, top_k)))
            sys.stdout.flush()
    finally:
        predictor.close()
    if not total:
        fail("<stdin>: no window: no keyframe or no frame decoded in the stream")
        sys.exit(1)
    if failed:
        click.echo(f"{failed} of {total} window(s) could not be predicted (named in their lines)", err=True)
        sys.exit(1)
