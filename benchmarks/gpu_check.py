"""GPU check: the training and I-frame paths that only a CUDA machine runs, in one table.

    python benchmarks/gpu_check.py [--out-md PATH]        # a CUDA machine, under 5 minutes
    python benchmarks/gpu_check.py --cpu-dry-run          # every code path on the CPU (gloo, fp32)

The parent builds a small real dataset (``mvmae.synth`` clips, extracted by ``run_job`` into
shards, and a codebook from them), then starts ONE worker under
``torchrun --standalone --nproc_per_node 1`` (the process group: nccl on CUDA, gloo on the CPU).
The worker runs, each as a row:

1. ``pretrain`` (``Pretrainer``, masked motion pretraining) eager, then with ``torch.compile``;
2. ``train`` (``Finetuner``, MV + I-frame classifier) eager, then compiled;
3. the VideoMAE-style baseline: a training step (forward, backward, AdamW) of timm's
   ``vit_small_patch16_224`` blocks (one block in the dry run) on a video of the same number of tokens per clip
   (tubelet 2x16x16 embedding, as VideoMAE ViT-S), eager and compiled;
4. the I-frame JPEG decode of a batch: ``torchvision.io.decode_jpeg(..., device='cuda')``
   against the CPU decode, pixels compared.

Each trainer runs 2 epochs of ``--steps`` steps (bf16 autocast on CUDA) and writes its
checkpoints; the row's tokens/s is over the second epoch (the first holds the compilation); the
last checkpoint must load into a fresh, uncompiled model. The table gives tokens/s and the ratio
to the ViT-S step of the same mode (eager or compiled). Any failed row makes the exit status 1.

``--cpu-dry-run``: the same rows on the CPU with micro models and a few steps: float32 (autocast
is CUDA-only in the trainers), gloo, and no compilation unless ``--compile-on-cpu`` (inductor's
CPU code generation needs a C++ compiler and minutes); the JPEG row decodes on the CPU twice.
It shows that the script runs; its speeds mean nothing. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this tree's mvmae, not another checkout's editable install


@dataclass
class Plan:
    """Sizes of one check (the GPU's, or the dry run's)."""

    motion_size: str
    context_model: str
    iframe_size: int
    mv_size: int
    batch_size: int
    steps: int
    compile: bool
    jpeg_batch: int
    vit_depth: int  # blocks of ViT-S in the baseline step (12: the whole model)
    warmup_steps: int  # untimed ViT-S steps before the timed ones
    workers: int  # DataLoader workers of the trainers


GPU_PLAN = Plan(motion_size="small", context_model="vit_small_patch16_224", iframe_size=224, mv_size=14,
                batch_size=16, steps=20, compile=True, jpeg_batch=64, vit_depth=12, warmup_steps=3, workers=4)
DRY_PLAN = Plan(motion_size="micro", context_model="resnet18", iframe_size=64, mv_size=4,
                batch_size=2, steps=2, compile=False, jpeg_batch=4, vit_depth=1, warmup_steps=1, workers=0)
SEGMENT_FRAMES, NUM_SEGMENTS = 16, 2  # synth clips of 32 frames: two segments of 16 MV frames


# --------------------------------------------------------------------------- parent: data


def build_data(root: Path, plan: Plan) -> dict:
    """Synth shards (12 train videos, 4 classes) and a codebook of their tokens."""
    from mvmae.job.job import JobConfig, run_job
    from mvmae.synth import SynthConfig, make_dataset
    from mvmae.train.codebook import CodebookConfig, build_codebook
    from mvmae.train.tokenizer import TokenSpec

    lists = make_dataset(root / "data", SynthConfig(num_classes=4, clips_per_class=3,
                                                    num_frames=NUM_SEGMENTS * SEGMENT_FRAMES, size=(128, 160)))
    summary = run_job(JobConfig(input=lists["train"], out_dir=root / "shards", split="train", shard_size=4))
    if summary.num_failed or summary.shards_failed:
        raise RuntimeError(f"extraction of the check's dataset failed: {summary}")
    shards = sorted(str(p) for p in (root / "shards").glob("train-*.tar"))
    spec = TokenSpec(num_frames=SEGMENT_FRAMES, mv_size=plan.mv_size)
    book = build_codebook(shards, spec, CodebookConfig(size=16), clips_per_video=1, batch_size=4, workers=0)
    return {"shards": shards, "codebook": str(book.save(root / "codebook.npz"))}


# --------------------------------------------------------------------------- worker: rows


def _epoch_seconds(metrics_file: Path, split: str) -> float:
    """Seconds between the ``split`` records of epochs 0 and 1 in a run's metrics.jsonl."""
    times = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == split:
            times[record["epoch"]] = record["time"]
    return times[1] - times[0]


def check_pretrain(data: dict, plan: Plan, out: Path, compile: bool) -> dict:
    import torch

    from mvmae.train import checkpoint as ckpt
    from mvmae.train.pretrain import PretrainConfig, Pretrainer, build_model

    cfg = PretrainConfig(train=data["shards"], codebook=data["codebook"], model_size=plan.motion_size,
                         masking="random", epochs=2, warmup_epochs=0, steps_per_epoch=plan.steps,
                         batch_size=plan.batch_size, workers=plan.workers, compile=compile, log_every=1,
                         out=str(out))
    trainer = Pretrainer(cfg)
    trainer.run()
    seconds = _epoch_seconds(out / "metrics.jsonl", "epoch")
    fresh = build_model(cfg, trainer.spec, trainer.book.size)
    fresh.load_state_dict(ckpt.load_checkpoint(out / "last.pt")[ckpt.MODEL])  # strict: no compile prefixes
    tokens = trainer.spec.grid.num_tokens
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"tokens_per_clip": tokens, "tokens_per_s": plan.steps * plan.batch_size * tokens / seconds}


def check_train(data: dict, plan: Plan, out: Path, compile: bool) -> dict:
    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.train.finetune import FinetuneConfig, Finetuner, load_classifier
    from mvmae.train.model import ClassifierConfig
    from mvmae.train.tokenizer import TokenSpec

    model = ClassifierConfig(inputs="both", context_model=plan.context_model, motion_size=plan.motion_size,
                             num_segments=NUM_SEGMENTS, dim=128, temporal_heads=4)
    cfg = FinetuneConfig(train=data["shards"], out=str(out), model=model, schedule="full", epochs=2,
                         warmup_epochs=0, steps_per_epoch=plan.steps, batch_size=plan.batch_size,
                         workers=plan.workers, compile=compile, best_metric="loss",
                         tokens=TokenSpec(num_frames=SEGMENT_FRAMES, mv_size=plan.mv_size,
                                          iframe_size=plan.iframe_size))
    trainer = Finetuner(cfg, StreamingMetrics)
    trainer.run()
    seconds = _epoch_seconds(out / "metrics.jsonl", "train")
    load_classifier(out / "last.pt")  # a fresh, uncompiled classifier takes the weights
    tokens = NUM_SEGMENTS * trainer.spec.grid.num_tokens
    return {"tokens_per_clip": tokens, "tokens_per_s": plan.steps * plan.batch_size * tokens / seconds}


def check_vit(time_steps: int, grid: int, plan: Plan, device, compile: bool, amp: bool) -> dict:
    """A VideoMAE-style ViT-S training step on clips of ``time_steps x grid x grid`` tokens
    (frames 2 x time_steps, 16 grid px square, tubelet 2x16x16)."""
    import timm
    import torch
    import torch.nn.functional as F

    tokens_per_clip = time_steps * grid * grid
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=4)
    embed = torch.nn.Conv3d(3, vit.embed_dim, kernel_size=(2, 16, 16), stride=(2, 16, 16))
    pos = torch.nn.Parameter(torch.zeros(1, tokens_per_clip, vit.embed_dim))
    blocks = vit.blocks[:plan.vit_depth]
    model = torch.nn.ModuleDict({"embed": embed, "blocks": blocks, "norm": vit.norm, "head": vit.head})
    model.pos = pos
    model.to(device)

    def forward(video):  # (B, 3, 2 time_steps, 16 grid, 16 grid)
        x = model["embed"](video).flatten(2).transpose(1, 2) + model.pos  # (B, N, C)
        return model["head"](model["norm"](model["blocks"](x)).mean(1))  # (B, classes)

    step_forward = torch.compile(forward) if compile else forward
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    video = torch.randn(plan.batch_size, 3, 2 * time_steps, 16 * grid, 16 * grid, device=device)
    label = torch.randint(0, 4, (plan.batch_size,), device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(step_forward(video).float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(plan.warmup_steps):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(plan.steps):
        loss = step()
    sync()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"ViT-S step: non-finite loss {loss.item()}")
    return {"tokens_per_clip": tokens_per_clip,
            "tokens_per_s": plan.steps * plan.batch_size * tokens_per_clip / (time.perf_counter() - t0)}


def check_jpeg(plan: Plan, device) -> dict:
    """Decode a batch of 224-px JPEGs (quality 90, as shards store I-frames) on ``device``
    against the CPU; the pixels must agree to a few grey levels (IDCTs differ slightly)."""
    import numpy as np
    import torch
    from skimage import data as photos
    from torchvision.io import decode_jpeg, encode_jpeg
    from torchvision.transforms.functional import resize

    image = torch.from_numpy(np.ascontiguousarray(photos.astronaut())).permute(2, 0, 1)  # (3, H, W)
    jpegs = [encode_jpeg(resize(image, [224, 224 + 8 * k], antialias=True), quality=90)
             for k in range(plan.jpeg_batch)]
    rows = {}
    for name, where in (("cpu", torch.device("cpu")), ("device", device)):
        decode_jpeg(jpegs[:2], device=where)  # warm-up (nvjpeg handles)
        t0 = time.perf_counter()
        decoded = decode_jpeg(jpegs, device=where)
        if where.type == "cuda":
            torch.cuda.synchronize()
        rows[name] = (time.perf_counter() - t0, [d.cpu() for d in decoded])
    diff = max((a.int() - b.int()).abs().float().mean().item() for a, b in zip(rows["cpu"][1], rows["device"][1]))
    if diff > 2.0:
        raise ValueError(f"device JPEG decode differs from the CPU's by {diff:.2f} grey levels on average")
    return {"images_per_s": plan.jpeg_batch / rows["device"][0], "cpu_images_per_s": plan.jpeg_batch / rows["cpu"][0],
            "mean_abs_diff": diff}


def worker(data_file: Path, plan: Plan, results_file: Path) -> None:
    """The rows, under torchrun: each row's outcome (numbers or the error) into ``results_file``."""
    import torch

    from mvmae.train.distributed import init_distributed

    info = init_distributed()
    backend = torch.distributed.get_backend()  # each trainer's run() ends the group; the next starts it
    data = json.loads(data_file.read_text())
    amp = info.device.type == "cuda"
    results: list[dict] = []

    def row(name: str, build) -> dict:
        t0 = time.perf_counter()
        try:
            outcome = {"ok": True, **build()}
        except Exception as exc:  # noqa: BLE001 - every failure is a row of the table, exit 1
            traceback.print_exc()
            outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        results.append({"name": name, "seconds": time.perf_counter() - t0, **outcome})
        results_file.write_text(json.dumps({"backend": backend, "device": str(info.device),
                                            "amp": amp, "rows": results}))
        return outcome

    runs = data_file.parent / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # a kept folder's earlier runs (trainers refuse to overwrite)
    modes = [False, True] if plan.compile else [False]
    for compile in modes:
        tag = "compiled" if compile else "eager"
        row(f"pretrain, {tag}", lambda: check_pretrain(data, plan, runs / f"pretrain-{tag}", compile))
        row(f"ViT-S step, pretrain's tokens, {tag}",
            lambda: check_vit(SEGMENT_FRAMES // 2, plan.mv_size, plan, info.device, compile, amp))
        row(f"train, {tag}", lambda: check_train(data, plan, runs / f"train-{tag}", compile))
        row(f"ViT-S step, train's tokens, {tag}",
            lambda: check_vit(NUM_SEGMENTS * SEGMENT_FRAMES // 2, plan.mv_size, plan, info.device, compile, amp))
    row("I-frame JPEG decode", lambda: check_jpeg(plan, info.device))


# --------------------------------------------------------------------------- parent: report


def table(results: dict) -> str:
    """Rows with tokens/s and the ratio to the ViT-S step of the same tokens and mode."""
    rows = {r["name"]: r for r in results["rows"]}
    lines = ["| check | ok | tokens / clip | tokens/s (images/s) | ratio to ViT-S, same tokens | seconds | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        kind, _, tag = name.rpartition(", ")
        base = rows.get(f"ViT-S step, {kind}'s tokens, {tag}", {}) if kind in ("pretrain", "train") else {}
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if r.get("ok") and base.get("ok") else ""
        if "images_per_s" in r:
            speed = f"{r['images_per_s']:,.0f} (CPU {r['cpu_images_per_s']:,.0f})"
            note = f"mean abs diff {r['mean_abs_diff']:.2f} grey levels"
        else:
            speed, note = f"{r.get('tokens_per_s', 0):,.0f}", ""
        lines.append(f"| {name} | {'yes' if r['ok'] else 'FAILED'} | {r.get('tokens_per_clip', '')} | "
                     f"{speed if r['ok'] else ''} | {ratio} | {r['seconds']:.1f} | {r.get('error', note)} |")
    return "\n".join(lines)


def launch(data_file: Path, plan: Plan, results_file: Path) -> int:
    """This script's worker under torchrun, one process: its exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(Path(__file__).resolve()), "--worker", str(data_file), str(results_file),
               json.dumps(asdict(plan))]
    return subprocess.run(command, env=env).returncode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="run every path on the CPU (gloo, fp32, micro)")
    p.add_argument("--compile-on-cpu", action="store_true", help="--cpu-dry-run: also the compiled rows")
    p.add_argument("--steps", type=int, help="steps per epoch and timed ViT-S steps (default: 20, dry run 2)")
    p.add_argument("--out-md", type=Path, help="also write the table as markdown to this file")
    p.add_argument("--keep", type=Path, help="build the dataset and runs here and keep them")
    p.add_argument("--worker", nargs=3, metavar=("DATA", "RESULTS", "PLAN"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        data_file, results_file, plan = args.worker
        worker(Path(data_file), Plan(**json.loads(plan)), Path(results_file))
        return 0
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (run with --cpu-dry-run to check the code paths on the CPU)", file=sys.stderr)
        return 1
    plan = DRY_PLAN if args.cpu_dry_run else GPU_PLAN
    plan = Plan(**{**asdict(plan), "compile": plan.compile or args.compile_on_cpu,
                   **({"steps": args.steps} if args.steps else {})})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        data_file, results_file = root / "data.json", root / "results.json"
        data_file.write_text(json.dumps(build_data(root, plan)))
        status = launch(data_file, plan, results_file)
        results = json.loads(results_file.read_text()) if results_file.exists() else {"rows": []}
    expected = 1 + 4 * (2 if plan.compile else 1)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu_dry_run else "CPU"
    report = [f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {device}; torch {torch.__version__}; "
              f"backend {results.get('backend')}, device {results.get('device')}, bf16 autocast {results.get('amp')}",
              f"- {'CPU DRY RUN (speeds mean nothing); ' if args.cpu_dry_run else ''}plan: {asdict(plan)}",
              f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(), "",
              table(results), "",
              f"Total {time.perf_counter() - t0:.0f} s; torchrun exit status {status}; "
              f"{len(results['rows'])} of {expected} rows."]
    print("\n".join(report))
    if args.out_md:
        args.out_md.write_text("\n".join(report) + "\n")
    failed = status != 0 or len(results["rows"]) != expected or not all(r["ok"] for r in results["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
