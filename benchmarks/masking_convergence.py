"""Masking strategies compared: is each pretext learned, and how fast does it pay?

    python benchmarks/masking_convergence.py [--maskings random tube mgm mofo videoms]
        [--epochs N] [--probe-epochs 2 4 8] [--fraction 0.1] [--seeds 0 1 2] [--work-dir DIR]
        [--schedule two_phase|full] [--no-val] [--plot PNG]

For each masking strategy and seed, one pretraining run on the trajectories set's pool + train
clips (``learning.build_data``), same model, optimizer, schedule and data; a checkpoint each epoch.

1. **Pretext diagnostics** at the last epoch (``mvmae.train.pretext``): ``acc_moving`` against
   ``acc_moving_baseline`` (always the most frequent moving code), ``info_gain_moving`` (nats,
   over the moving targets: the default ``static_weight`` 0 never trains "static", so the gain
   over all targets is no judge), visible moving tokens per clip and the share of clips that show
   none. Counted as learned here: acc_moving above 1.5x its baseline and info_gain_moving > 0.1.
2. **Convergence**: fine-tuning at ``--fraction`` labels (same subset, seed and schedule) from the
   checkpoints after each of ``--probe-epochs`` pretraining epochs; test macro-F1 against
   pretraining epochs, paired against random masking at the same epoch, beside the same model
   fine-tuned from scratch; a plot of the curves. The MGM claim (the same accuracy in up to 66%
   fewer epochs) holds here if MGM at E/2 is not clearly below random masking at E (``mgm_verdict``).
3. **VideoMS cost**: seconds per pretraining step and the encoder's tokens per clip against random
   masking, on the same batches (``measure_step``), and the peak memory of one step (forward +
   backward) in a fresh process per masking (``measure_memory``: the growth of the process's peak
   RSS over one step, on the CPU; on a CUDA machine ``benchmarks/gpu_check.py`` is the place).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning  # noqa: E402
from common import loadavg  # noqa: E402

from mvmae.shards.reader import build_eval_pipeline  # noqa: E402
from mvmae.train.codebook import Codebook  # noqa: E402
from mvmae.train.masking import build_masking  # noqa: E402
from mvmae.train.pretext import PretextOptions, pretext_loss  # noqa: E402
from mvmae.train.pretrain import PretrainConfig, build_model  # noqa: E402
from mvmae.train.tokenizer import TokenSpec  # noqa: E402

DIAGNOSTICS = ("acc_moving", "acc_moving_baseline", "info_gain_moving", "info_gain", "static_target_ratio",
               "visible_moving_mean", "no_visible_motion_ratio")


def diagnostics(folders: dict) -> str:
    lines = ["| masking | seed | " + " | ".join(DIAGNOSTICS) + " | learned |",
             "|---|---|" + "---|" * len(DIAGNOSTICS) + "---|"]
    for (masking, seed), folder in folders.items():
        last = learning.epoch_records(folder)[-1]
        learned = last["acc_moving"] > 1.5 * last["acc_moving_baseline"] and last["info_gain_moving"] > 0.1
        lines.append(f"| {masking} | {seed} | " + " | ".join(f"{last[k]:.3f}" for k in DIAGNOSTICS)
                     + f" | {'yes' if learned else 'no'} |")
    return "\n".join(lines)


def convergence(work: Path, data: learning.Data, folders: dict, probe_epochs: list[int], fraction: float,
                epochs: int, schedule: str = "two_phase", validate: bool = True) -> dict:
    """{(masking, seed, pretraining epoch): fine-tuning result at ``fraction`` labels}, and
    {("scratch", seed, 0): the same fine-tuning from scratch} (same subset, seed and epochs; the
    scratch arm with the command's default schedule: an encoder from scratch trains whole)."""
    embed = learning.PRETRAIN.get("embed", PretrainConfig().embed)
    tail = f"f{fraction}-{schedule}{'' if validate else '-noval'}"
    common = {"label_fraction": fraction, "epochs": epochs, "validate": validate}
    out = {}
    for (masking, seed), folder in folders.items():
        for e in probe_epochs:
            ckpt = folder / f"epoch_{e - 1:04d}.pt"
            out[masking, seed, e] = learning.finetune(work, f"conv-{masking}-{embed}-s{seed}-e{e}-{tail}", data, seed,
                                                      label_seed=seed, pretrained=str(ckpt), schedule=schedule,
                                                      **common)
        if ("scratch", seed, 0) not in out:  # the name label_efficiency.py gives the same run
            out["scratch", seed, 0] = learning.finetune(
                work, f"scratch-{embed}-s{seed}-l{seed}-f{fraction}-{'val' if validate else 'noval'}", data, seed,
                label_seed=seed, **common)
    return out


def convergence_table(results: dict, maskings: list[str], seeds: list[int], probe_epochs: list[int]) -> str:
    lines = ["| masking | " + " | ".join(f"after {e} ep." for e in probe_epochs) + " | diff vs random at the last "
             "[95% CI] |", "|---|" + "---|" * (len(probe_epochs) + 1)]
    for masking in maskings:
        cells = []
        for e in probe_epochs:
            vals = [results[masking, s, e]["test_macro_f1"] for s in seeds]
            cells.append(f"{sum(vals) / len(vals):.3f}")
        last = probe_epochs[-1]
        diffs = [results[masking, s, last]["test_macro_f1"] - results["random", s, last]["test_macro_f1"]
                 for s in seeds] if "random" in maskings else []
        ci = learning.bootstrap_ci(diffs) if diffs and masking != "random" else None
        cells.append(f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]" if ci else "-")
        lines.append(f"| {masking} | " + " | ".join(cells) + " |")
    scratch = [results["scratch", s, 0]["test_macro_f1"] for s in seeds if ("scratch", s, 0) in results]
    if scratch:
        lines.append(f"| (no pretraining) | {sum(scratch) / len(scratch):.3f} at every column |" + " |" * len(probe_epochs))
    return "\n".join(lines)


def mgm_verdict(results: dict, seeds: list[int], probe_epochs: list[int]) -> str:
    """The MGM claim (random masking's accuracy in half the epochs or fewer), judged at the last
    probe epoch E: MGM after the largest probe epoch <= E / 2 against random masking after E."""
    last = probe_epochs[-1]
    half = [e for e in probe_epochs if e <= last / 2]
    if not half or any(("mgm", s, last) not in results or ("random", s, last) not in results for s in seeds):
        return "MGM verdict: needs mgm and random and a probe epoch <= half the last"
    diffs = [results["mgm", s, half[-1]]["test_macro_f1"] - results["random", s, last]["test_macro_f1"] for s in seeds]
    ci = learning.bootstrap_ci(diffs)
    held = ci[1] > -0.02  # not clearly worse: the lower bound within 2 points of equal
    return (f"MGM after {half[-1]} ep. minus random after {last} ep., macro-F1: {ci[0]:+.3f} [{ci[1]:+.3f}, "
            f"{ci[2]:+.3f}] over {len(seeds)} seed(s): the claim {'holds' if held else 'does not hold'} here")


def plot(results: dict, maskings: list[str], seeds: list[int], probe_epochs: list[int], path: Path) -> None:
    """Test macro-F1 (mean and sd over seeds) against pretraining epochs, one line per masking, and
    the scratch model as a horizontal band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for masking in maskings:
        values = [[results[masking, s, e]["test_macro_f1"] for s in seeds] for e in probe_epochs]
        ax.errorbar(probe_epochs, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], marker="o",
                    capsize=3, label=masking)
    scratch = [results["scratch", s, 0]["test_macro_f1"] for s in seeds if ("scratch", s, 0) in results]
    if scratch:
        m, sd = float(np.mean(scratch)), float(np.std(scratch))
        ax.axhspan(m - sd, m + sd, color="grey", alpha=0.2)
        ax.axhline(m, color="grey", linestyle="--", label="no pretraining")
    ax.set_xlabel("pretraining epochs")
    ax.set_ylabel("test macro-F1 after fine-tuning")
    ax.set_xticks(probe_epochs)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure_step(data: learning.Data, maskings: list[str], rounds: int = 5) -> str:
    """Seconds per pretraining step (forward + backward, batch 16) and encoder tokens per clip."""
    book = Codebook.load(data.codebook)
    spec = TokenSpec(**book.token_spec)
    batch = next(iter(build_eval_pipeline(data.train, spec.clip_config("center", num_iframes=0), 16)))
    lines = ["| masking | s per step (median) | ratio to random | encoder tokens per clip |", "|---|---|---|---|"]
    times = {}
    for masking in maskings:
        torch.manual_seed(0)
        model = build_model(PretrainConfig(**{k: v for k, v in learning.PRETRAIN.items()
                                              if k in ("model_size", "decoder_dim", "decoder_depth", "decoder_heads")}),
                            spec, book.size)
        strategy = build_masking(masking, **({"px_per_token": spec.px_per_token} if masking == "mgm" else {}))
        samples = []
        for r in range(rounds):
            t0 = time.perf_counter()
            loss, _ = pretext_loss(model, batch, spec, book, strategy, PretextOptions(),
                                   torch.Generator().manual_seed(r), torch.device("cpu"))
            loss.backward()
            samples.append(time.perf_counter() - t0)
        times[masking] = sorted(samples)[len(samples) // 2]
        grid = tuple(spec.grid.shape)
        num_masked, num_dropped = strategy.counts(grid)
        times[masking, "tokens"] = spec.grid.num_tokens - num_masked - num_dropped
    for masking in maskings:
        ratio = times[masking] / times["random"] if "random" in times else float("nan")
        lines.append(f"| {masking} | {times[masking]:.3f} | {ratio:.2f}x | {times[masking, 'tokens']} |")
    return "\n".join(lines)


# One pretraining step in a fresh process: peak RSS before and after (VmHWM), so the growth is the
# step's own peak (activations, gradients, the optimizer's nothing: no optimizer step is taken).
_MEMORY_CHILD = r"""
import json, sys
import torch
from mvmae.shards.reader import build_eval_pipeline
from mvmae.train.codebook import Codebook
from mvmae.train.masking import build_masking
from mvmae.train.pretext import PretextOptions, pretext_loss
from mvmae.train.pretrain import PretrainConfig, build_model
from mvmae.train.tokenizer import TokenSpec

def vm_hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

torch.set_num_threads(1)
codebook, urls, masking, batch_size, model_args = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
book = Codebook.load(codebook)
spec = TokenSpec(**book.token_spec)
batch = next(iter(build_eval_pipeline(urls, spec.clip_config("center", num_iframes=0), batch_size)))
torch.manual_seed(0)
model = build_model(PretrainConfig(**model_args), spec, book.size)
strategy = build_masking(masking, **({"px_per_token": spec.px_per_token} if masking == "mgm" else {}))
before = vm_hwm_mib()
loss, _ = pretext_loss(model, batch, spec, book, strategy, PretextOptions(), torch.Generator().manual_seed(0), torch.device("cpu"))
loss.backward()
print(json.dumps({"before_mib": before, "peak_mib": vm_hwm_mib()}))
"""


def measure_memory(data: learning.Data, maskings: list[str], batch_size: int = 64) -> str:
    """Peak RSS growth of one pretraining step (forward + backward, ``batch_size`` clips) per
    masking, each in a fresh process, against random masking."""
    model_args = {k: v for k, v in learning.PRETRAIN.items()
                  if k in ("model_size", "decoder_dim", "decoder_depth", "decoder_heads")}
    lines = [f"| masking | peak RSS growth of one step, batch {batch_size} (MiB) | ratio to random |",
             "|---|---|---|"]
    growth = {}
    for masking in maskings:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, data.codebook, json.dumps(data.train), masking,
                              str(batch_size), json.dumps(model_args)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        growth[masking] = r["peak_mib"] - r["before_mib"]
    for masking in maskings:
        ratio = growth[masking] / growth["random"] if "random" in growth else float("nan")
        lines.append(f"| {masking} | {growth[masking]:.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = learning.arguments(__doc__, seeds=[0, 1, 2])
    parser.add_argument("--maskings", nargs="+", default=["random", "tube", "mgm", "mofo", "videoms"])
    parser.add_argument("--epochs", type=int, default=8, help="pretraining epochs")
    parser.add_argument("--probe-epochs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--finetune-epochs", type=int, default=50)
    parser.add_argument("--no-convergence", action="store_true", help="diagnostics and step cost only")
    parser.add_argument("--schedule", choices=["two_phase", "full"], default="two_phase",
                        help="fine-tuning schedule of the pretrained runs")
    parser.add_argument("--no-val", action="store_true",
                        help="no validation after each fine-tuning epoch (several times faster at 10%% labels)")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("masking_convergence.png"))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = learning.start(args, "masking strategies")
    embed = learning.PRETRAIN.get("embed", PretrainConfig().embed)
    folders = {(m, s): learning.pretrain(args.work_dir, f"pt-{m}-{embed}-e{args.epochs}-s{s}", data, m, args.epochs, s)
               for s in args.seeds for m in args.maskings}
    print("pretext diagnostics at the last epoch (pool + train clips):")
    print(diagnostics(folders))
    print("cost per pretraining step (same batch of 16, one thread):")
    print(measure_step(data, args.maskings))
    print("peak memory of one pretraining step (fresh process each, CPU):")
    print(measure_memory(data, args.maskings))
    if not args.no_convergence:
        results = convergence(args.work_dir, data, folders, args.probe_epochs, args.fraction, args.finetune_epochs,
                              args.schedule, not args.no_val)
        print(f"test macro-F1 after fine-tuning at {args.fraction:.0%} labels, by pretraining epochs:")
        print(convergence_table(results, args.maskings, args.seeds, args.probe_epochs))
        print(mgm_verdict(results, args.seeds, args.probe_epochs))
        plot(results, args.maskings, args.seeds, args.probe_epochs, args.plot)
        print(f"plot: {args.plot}")
    print(f"{time.perf_counter() - t0:.0f} s in all, load {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
