"""The on-the-fly loaders that ``loader_speed.py`` measures the shard reader against: what a
decode-at-train-time data set does per clip.

* :func:`on_the_fly_clip`: mvmae's own clip (16 MV frames + one I-frame) decoded from the mp4 with
  PyAV (one slice thread, ``+export_mvs``): seek to the keyframe before the clip, decode to its last
  frame, rasterise each clip frame's raw vectors (no reference resolution, so *cheaper* than what the
  shards hold) and take the decoded I-frame nearest the clip centre, then the reader's crop/resize.
* :func:`decord_clip`: the RGB clip VideoMAE and mmaction2 load with decord (16 frames at stride 4,
  resized by decord to short side 224, one thread, a random 224 crop and flip). Users compare
  against it: it is what they would otherwise run.
* :func:`torchcodec_clip`: the same RGB clip with torchcodec, which needs FFmpeg's shared libraries
  on the system (:func:`rgb_loaders` says why it did not run where they are missing).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

from mvmae.extract.mvfield import rasterize
from mvmae.extract.picture import blocks_of
from mvmae.shards.clips import ClipConfig, nearest_iframes, random_crop_box, resample_mv, snap_box
from mvmae.shards.reader import TORCH_IFRAMES

GRID = 8  # the MV grid of the shards (run_job's default)
BATCH = 8
RGB_FRAMES, RGB_STRIDE, RGB_SHORT, RGB_CROP = 16, 4, 224, 224  # VideoMAE's clip of the RGB loaders


def on_the_fly_clip(path: Path, clip: ClipConfig, rng: np.random.Generator) -> dict:
    """One training clip decoded from the mp4: seek, decode, rasterise, I-frame, crop/resize."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
        stream.codec_context.options = {"flags2": "+export_mvs"}
        fps, tb = float(stream.average_rate), stream.time_base
        num_frames = stream.frames
        start = int(rng.integers(0, num_frames - clip.span + 1))
        container.seek(int(start / fps / tb), stream=stream, backward=True, any_frame=False)
        size = (stream.codec_context.height, stream.codec_context.width)
        cells = (-(-size[0] // GRID), -(-size[1] // GRID))
        mv = np.zeros((clip.num_frames, 2, *cells), np.float32)  # (T, 2, h, w)
        valid = np.zeros((clip.num_frames, *cells), bool)  # (T, h, w)
        iframes: dict[int, np.ndarray] = {}  # uint8 (H, W, 3)
        for frame in container.decode(stream):
            index = round(float(frame.pts * tb) * fps)
            if frame.key_frame:
                iframes[index] = frame.reformat(format="rgb24", threads=1).to_ndarray()
            if index >= start and (index - start) % clip.stride == 0:
                t = (index - start) // clip.stride
                blocks = blocks_of(frame)
                if blocks is not None:
                    velocity = blocks.motion * blocks.direction  # raw, not resolved
                    mv[t], valid[t] = rasterize(blocks, velocity, size, GRID)
            if index >= start + clip.span - 1:
                break
    index = np.array(sorted(iframes))
    chosen = index[nearest_iframes(index, start + (clip.span - 1) / 2, clip.num_iframes)]
    box, box_px = snap_box(random_crop_box(size, clip, rng), size)  # the reader's crop and resize
    mv, valid = resample_mv(mv, valid, size, GRID, box, clip)
    images = TORCH_IFRAMES.crop_resize([iframes[i] for i in chosen], box_px, clip.iframe_size)
    if rng.random() < clip.flip_prob:
        mv, valid, images = mv[..., ::-1].copy(), valid[..., ::-1].copy(), images[..., ::-1].copy()
        mv[:, 0] *= -1
    return {"mv": torch.from_numpy(mv), "valid": torch.from_numpy(valid), "iframes": torch.from_numpy(images)}


def _rgb_clip_box(shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a random RGB_CROP square crop in a (height, width) frame."""
    return int(rng.integers(0, shape[0] - RGB_CROP + 1)), int(rng.integers(0, shape[1] - RGB_CROP + 1))


def _crop_flip(frames: np.ndarray, rng: np.random.Generator) -> dict:
    """VideoMAE's train-time crop of decoded (T, H, W, 3) uint8 frames: a random 224 square and a
    random horizontal flip, as a (T, 3, 224, 224) uint8 tensor."""
    y, x = _rgb_clip_box(frames.shape[1:3], rng)
    frames = frames[:, y:y + RGB_CROP, x:x + RGB_CROP]
    if rng.random() < 0.5:
        frames = frames[:, :, ::-1]
    return {"rgb": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))}


def _rgb_indices(num_frames: int, rng: np.random.Generator) -> list[int]:
    start = int(rng.integers(0, num_frames - RGB_STRIDE * (RGB_FRAMES - 1)))
    return [start + RGB_STRIDE * i for i in range(RGB_FRAMES)]


def _short_side(size: tuple[int, int], short: int = RGB_SHORT) -> tuple[int, int]:
    """(height, width) with the short side ``short`` (even sizes, aspect kept)."""
    h, w = size
    return (short, 2 * round(w * short / h / 2)) if h <= w else (2 * round(h * short / w / 2), short)


def decord_clip(path: Path, meta: dict, rng: np.random.Generator) -> dict:
    """VideoMAE's and mmaction2's decord loader: open the mp4 (one decoding thread, frames resized by
    decord to short side 224), read 16 frames at stride 4 from a uniform start, random crop + flip."""
    import decord

    h, w = _short_side(meta["size"])
    reader = decord.VideoReader(str(path), width=w, height=h, num_threads=1, ctx=decord.cpu(0))
    frames = reader.get_batch(_rgb_indices(meta["num_frames"], rng)).asnumpy()
    return _crop_flip(frames, rng)


def torchcodec_clip(path: Path, meta: dict, rng: np.random.Generator) -> dict:
    """The same clip with torchcodec (one FFmpeg thread, exact seeks), resized to short side 224
    with torch's bilinear (antialiased) resize: torchcodec decodes at the stored size."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), num_ffmpeg_threads=1, seek_mode="exact")
    frames = decoder.get_frames_at(_rgb_indices(meta["num_frames"], rng)).data  # (T, 3, H, W) uint8
    frames = torch.nn.functional.interpolate(frames.float(), size=_short_side(meta["size"]), mode="bilinear",
                                             antialias=True, align_corners=False).round_().clamp_(0, 255)
    return _crop_flip(frames.to(torch.uint8).permute(0, 2, 3, 1).numpy(), rng)


def rgb_loaders(video: Path) -> tuple[dict, dict]:
    """The RGB on-the-fly loaders that work here ({name: function}) and why the others do not
    ({name: reason}); each is tried on ``video``, since torchcodec imports without FFmpeg and fails
    only when it loads its core library."""
    loaders, missing, meta = {}, {}, video_meta(video)
    for name, fn in (("decord", decord_clip), ("torchcodec", torchcodec_clip)):
        try:
            fn(video, meta, np.random.default_rng(0))
            loaders[name] = fn
        except Exception as exc:  # noqa: BLE001 (reported under the table)
            text = " ".join(str(exc).split())  # torchcodec's message spans lines: its likely causes
            missing[name] = f"{type(exc).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"
    return loaders, missing


def video_meta(path: Path) -> dict:
    """Frame count and (height, width) of an mp4, read once outside the timed loops (a dataset's
    annotation file or a loader's cache knows them)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {"num_frames": stream.frames, "size": (stream.codec_context.height, stream.codec_context.width)}


def on_the_fly_round(videos: list[Path], clip: ClipConfig, rng: np.random.Generator, loader=None,
                     metas: dict | None = None) -> int:
    """One clip per video, collated in batches of 8 (as the reader's batches). loader: an RGB
    loader of :func:`rgb_loaders` (None: PyAV with motion vectors, :func:`on_the_fly_clip`)."""
    batch = []
    for path in videos:
        batch.append(on_the_fly_clip(path, clip, rng) if loader is None else loader(path, metas[path], rng))
        if len(batch) == BATCH:
            {k: torch.stack([c[k] for c in batch]) for k in batch[0]}
            batch = []
    return len(videos)
