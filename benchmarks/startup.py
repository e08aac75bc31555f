"""Start-up cost of the ``mvmae`` command: fresh processes against the same work in a warm one.

    python benchmarks/startup.py [--repeats N] [--baseline-ref REF] [--out-md PATH]

The clip is the issue's: a 30-second 640x360 libx264 pan (3 B-frames, 4 references, GOP 48, 25 fps,
750 frames; ``tests.media.make_pan_clip``, 144 frames encoded once and remuxed back to back),
cached in ``--cache-dir``.

1. **Commands**, each in a fresh interpreter (``python -m mvmae ...``), ``N`` runs interleaved
   round-robin: ``python -c pass`` (the interpreter's own start), ``mvmae --help``, ``mvmae probe
   CLIP`` and ``mvmae extract video CLIP --out F.npz``; then the same extraction run ``N`` times
   through the same ``main`` in one process that ran it once before (warm: modules imported,
   kernels loaded). Reported: the median wall time and the median CPU time (user + sys of
   the child, which other work on the machine disturbs much less), and the cold extraction's
   ratio to the warm one. With ``--baseline-ref`` the same rows are measured for that git revision
   (exported with ``git archive`` into the cache folder, its C kernels built in place when it has
   them), interleaved with this tree's.
2. **Where a cold extraction's time goes**: one fresh process per run, the CPU time of each stage.
3. **The .npz write** of the clip's export: ``np.savez_compressed`` (zlib level 6), mvmae's
   ``write_npz`` (level 1) and stored (no compression), time and size.

Every child runs with ``PYTHONPATH`` set to the tree measured; the process is pinned to one CPU.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.media (clip generator) lives in the repository, not the package
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, extract_speed.py
from common import cpu_model, git_state, loadavg  # noqa: E402
from extract_speed import _remux_repeated, pin_to_one_cpu  # noqa: E402

CLIP = dict(vx=3.0, vy=1.0, size=(360, 640), bframes=3, refs=4, gop=48, fps=25)
UNIT_FRAMES, CLIP_FRAMES = 144, 750  # 3 GOPs encoded, remuxed to 30 s
TARGET_RATIO = 1.5  # from the issue: one-video CLI within 1.5x of the same extraction warm
COLD = "mvmae extract video CLIP --out F.npz"
WARM = "same extraction, warm process (in-process main())"

_WARM = r"""
import os, sys, time
from mvmae.cli import main
out, args, repeats = sys.argv[1], sys.argv[2:], int(os.environ["STARTUP_REPEATS"])
def once():
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
    return time.perf_counter() - t0, time.process_time() - c0
once()  # warm-up: imports, kernels (numba's cache in trees before the C kernels)
with open(out, "w") as fh:
    for _ in range(repeats):
        fh.write("%r %r\n" % once())
"""

_STAGES = r"""
import sys, time
clock = time.process_time
marks = [("interpreter start", clock())]
import mvmae.cli
marks.append(("import mvmae.cli", clock()))
from mvmae.extract.export import save_export
from mvmae.extract.video import extract_video
marks.append(("import extraction (numpy, av; numba before the C kernels)", clock()))
import numpy as np
from mvmae.extract import kernels
i32 = np.zeros(4, np.int32)
kernels.rasterize_blocks(i32, i32, i32 + 8, i32 + 8, np.zeros((2, 4), np.float32), 16, 16, 8)
marks.append(("first kernel call (numba: its on-disk cache load)", clock()))
fields = extract_video(sys.argv[1])
marks.append(("extract_video", clock()))
save_export(sys.argv[2], fields)
marks.append(("save_export (.npz)", clock()))
for (_, a), (name, b) in zip(marks, marks[1:]):
    print(f"{name}\t{b - a:.4f}")
print(f"total in process\t{marks[-1][1]:.4f}")
print(f"mvmae\t{mvmae.__file__}")
"""

_NPZ = r"""
import io, sys, time, zipfile
import numpy as np
from mvmae.extract.export import write_npz
from mvmae.extract.video import extract_video
fields = extract_video(sys.argv[1])
arrays = dict(mv=fields.mv, valid=fields.valid, frame_types=fields.frame_types, iframes=fields.iframes,
              iframe_index=fields.iframe_index)
def stored(fh, **a):
    np.savez(fh, **a)
writers = [("np.savez_compressed (zlib 6)", np.savez_compressed), ("mvmae write_npz (zlib 1)", write_npz),
           ("np.savez (stored)", stored)]
times = {name: [] for name, _ in writers}
sizes = {}
for _ in range(int(sys.argv[2])):
    for name, write in writers:
        buf = io.BytesIO()
        c0 = time.process_time()
        write(buf, **arrays)
        times[name].append(time.process_time() - c0)
        sizes[name] = len(buf.getvalue())
raw = sum(a.nbytes for a in arrays.values())
for name, _ in writers:
    print(f"{name}\t{min(times[name]):.4f}\t{sizes[name]}\t{raw}")
"""


def make_clip(cache_dir: Path) -> Path:
    """The 30-second pan (cached): one encoded unit of 3 GOPs remuxed back to back."""
    from tests.media import make_pan_clip

    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = "pan{vx}x{vy}_{size[0]}x{size[1]}_bf{bframes}_refs{refs}_gop{gop}_{fps}fps".format(**CLIP)
    out = cache_dir / f"{tag}_x{CLIP_FRAMES}f.mp4"
    if not out.is_file():
        unit = cache_dir / f"{tag}_{UNIT_FRAMES}f.mp4"
        if not unit.is_file():
            make_pan_clip(unit.with_suffix(".tmp.mp4"), num_frames=UNIT_FRAMES, **CLIP)
            os.replace(unit.with_suffix(".tmp.mp4"), unit)
        _remux_repeated(unit, out.with_suffix(".tmp.mp4"), CLIP_FRAMES)
        os.replace(out.with_suffix(".tmp.mp4"), out)
    return out


def export_tree(ref: str, cache_dir: Path) -> tuple[Path, str]:
    """``git archive`` of ``ref`` unpacked under ``cache_dir`` (once per commit): (folder, commit)."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    folder = cache_dir / f"tree-{commit}"
    if not folder.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=cache_dir))
        has_setup = subprocess.run(["git", "cat-file", "-e", f"{commit}:setup.py"], cwd=REPO,
                                   stderr=subprocess.DEVNULL).returncode == 0
        paths = ["mvmae", "setup.py", "setup.cfg", "pyproject.toml", "README.md"] if has_setup else ["mvmae"]
        archive = subprocess.run(["git", "archive", commit, *paths], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        if has_setup:  # the compiled kernels, in place
            subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp, check=True)
        os.replace(tmp, folder)
    return folder, commit


def run_child(argv: list[str], tree: Path, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``python argv`` in ``tree`` with PYTHONPATH=tree: (wall s, CPU s of the child, stdout).
    In ``tree``: ``-c`` and ``-m`` put the working folder first on sys.path, before PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, cwd=tree)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def commands(clip: Path, out: Path) -> dict[str, list[str]]:
    return {
        "python -c pass (interpreter)": ["-c", "pass"],
        "mvmae --help": ["-m", "mvmae", "--help"],
        "mvmae probe CLIP": ["-m", "mvmae", "probe", str(clip)],
        COLD: ["-m", "mvmae", "extract", "video", str(clip), "--out", str(out)],
    }


def measure_commands(trees: dict[str, Path], clip: Path, work: Path, repeats: int) -> dict:
    """{(tree label, row): [(wall, cpu), ...]}: cold commands interleaved, then the warm runs."""
    cmds = commands(clip, work / "cold.npz")
    keys = [(label, name) for label in trees for name in cmds]
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in keys}
    for label, tree in trees.items():  # untimed: fill numba's cache (older trees) and the page cache
        run_child(cmds[COLD], tree)
    for r in range(repeats):
        for label, name in keys[r % len(keys):] + keys[:r % len(keys)]:
            wall, cpu, _ = run_child(cmds[name], trees[label])
            runs[(label, name)].append((wall, cpu))
    for label, tree in trees.items():
        times = work / f"warm-{label}.txt"
        run_child(["-c", _WARM, str(times), "extract", "video", str(clip), "--out", str(work / "warm.npz")],
                  tree, {"STARTUP_REPEATS": str(repeats)})
        runs[(label, WARM)] = [tuple(map(float, line.split())) for line in times.read_text().splitlines()]
    return runs


def commands_table(runs: dict, labels: list[str]) -> str:
    lines = ["| tree | command | wall s (median) | CPU s (median) | cold / warm (wall) | cold / warm (CPU) | target |",
             "|---|---|---:|---:|---:|---:|---|"]
    for label in labels:
        med = {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
               for (lab, name), v in runs.items() if lab == label}
        for name, (wall, cpu) in med.items():
            ratio_wall = ratio_cpu = target = ""
            if name == COLD:
                ratio_wall, ratio_cpu = f"{wall / med[WARM][0]:.2f}", f"{cpu / med[WARM][1]:.2f}"
                ok = cpu / med[WARM][1] <= TARGET_RATIO
                target = f"<= {TARGET_RATIO}x warm (CPU): {'met' if ok else 'NOT met'}"
            lines.append(f"| {label} | {name} | {wall:.3f} | {cpu:.3f} | {ratio_wall} | {ratio_cpu} | {target} |")
    return "\n".join(lines)


def stages_table(trees: dict[str, Path], clip: Path, work: Path, repeats: int) -> str:
    rows: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeats):
        for label, tree in trees.items():
            _, _, out = run_child(["-c", _STAGES, str(clip), str(work / "stages.npz")], tree)
            for line in out.splitlines():
                name, value = line.split("\t")
                if name == "mvmae" and not Path(value).is_relative_to(tree):
                    raise RuntimeError(f"{label}: the child imported {value}, not the tree's mvmae")
                if name != "mvmae":
                    rows.setdefault(name, {}).setdefault(label, []).append(float(value))
    lines = ["| stage (CPU s, median) | " + " | ".join(trees) + " |", "|---|" + "---:|" * len(trees)]
    for name, per_tree in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{statistics.median(per_tree[t]):.3f}" for t in trees) + " |")
    return "\n".join(lines)


def npz_table(tree: Path, clip: Path, repeats: int) -> str:
    _, _, out = run_child(["-c", _NPZ, str(clip), str(repeats)], tree)
    lines = ["| writer | CPU s (best) | MB | ratio to the arrays' bytes |", "|---|---:|---:|---:|"]
    for line in out.splitlines():
        name, cpu, size, raw = line.split("\t")
        lines.append(f"| {name} | {float(cpu):.3f} | {int(size) / 1e6:.2f} | {int(size) / int(raw):.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="runs per command and tree (default 5)")
    p.add_argument("--baseline-ref", help="also measure this git revision (e.g. main), interleaved")
    p.add_argument("--out-md", type=Path, help="also write the report as markdown to this file")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mvmae-bench",
                   help="where the clip and the baseline tree are kept between runs")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_start, t_start = loadavg(), time.perf_counter()
    cpu = pin_to_one_cpu(args.cpu)
    clip = make_clip(args.cache_dir)
    trees = {"this tree": REPO}
    base_note = ""
    if args.baseline_ref:
        folder, commit = export_tree(args.baseline_ref, args.cache_dir)
        trees = {f"{args.baseline_ref} ({commit})": folder, **trees}
        base_note = f"; baseline: {args.baseline_ref} = commit {commit} (git archive)"
    report = ["# Start-up (one core)", "",
              f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
              f"- machine: nproc {os.cpu_count()}, CPU model \"{cpu_model()}\"; pinned to CPU {cpu}",
              f"- Python {platform.python_version()}; mvmae: {git_state()}{base_note}",
              f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(),
              f"- clip: {clip.name} ({CLIP_FRAMES} frames, 30 s)", ""]
    print("\n".join(report), flush=True)
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        work = Path(tmp)
        sections = [("Commands, fresh process each vs warm", lambda: commands_table(
                        measure_commands(trees, clip, work, args.repeats), list(trees))),
                    ("Where a cold extraction's CPU time goes (fresh process each)",
                     lambda: stages_table(trees, clip, work, args.repeats)),
                    ("The .npz write of the clip's export (this tree)", lambda: npz_table(REPO, clip, args.repeats))]
        for title, build in sections:
            report.append(f"## {title}\n\n{build()}\n")
            print(report[-1], flush=True)
    report.append(f"Total wall time: {time.perf_counter() - t_start:.0f} s; load average (1, 5, 15 min) "
                  f"at start {load_start}, at end {loadavg()} (above 1 means other work shared the cores).\n")
    print(report[-1])
    if args.out_md:
        args.out_md.write_text("\n".join(report))


if __name__ == "__main__":
    main()
