"""Does masked motion pretraining pay? Gates, then pretrained against scratch at 100/25/10% labels.

    python benchmarks/label_efficiency.py [--seeds 0 1 2 3 4] [--fractions 1 0.25 0.1]
        [--pretrain-epochs N] [--epochs N] [--schedule two_phase|full] [--layer-decay D] [--draws K] [--no-val]
        [--work-dir DIR] [--plot PNG]

Data: ``mvmae synth --preset trajectories`` (12 classes that only motion over time separates: turn
left / right, circles cw / ccw, u-turn, zigzag, stop-and-go, ... at random orientation, speed and
start time, with camera drift, a real-photo ground and distractors), split train / val / test, and
an unlabelled pool 5x the labelled train set (``learning.build_data``).

1. **Gates** (printed before any pretraining): the MV classifier from scratch at 100% labels; the
   same at 10%; an I-frame-only model (the plain 3D CNN over the one I-frame a clip has); and the
   plain 3D CNN over the MV field, the baseline the transformer must beat.
2. **Pretraining**, one run per seed, on pool + train clips (labels unused), the default masking.
3. **Fine-tuning**, for each seed and label fraction: the pretrained encoder and the same model
   from scratch, same schedule, same labelled subset (``--label-fraction``, ``--label-seed`` =
   seed), same seed. Reported: test top-1 and macro-F1, and the **paired difference**
   (pretrained - scratch) with a bootstrap 95% interval over seeds.

Every run is cached in the work dir (``learning._cached``): run it again to resume.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning  # noqa: E402
from common import loadavg  # noqa: E402

from mvmae.train.pretrain import PretrainConfig  # noqa: E402


def gates(work: Path, data: learning.Data, epochs: int) -> list[tuple[str, dict]]:
    runs = [("mvmae, scratch, 100%", {}), ("mvmae, scratch, 10%", {"label_fraction": 0.1}),
            ("cnn3d over MV, 100%", {"model.arch": "cnn3d"}),
            ("cnn3d over the I-frame, 100%", {"model.arch": "cnn3d", "model.inputs": "iframe"})]
    rows = []
    for label, options in runs:
        name = "gate-" + label.replace(" ", "").replace(",", "-").replace("%", "")
        rows.append((label, learning.finetune(work, name, data, seed=0, epochs=epochs, **options)))
        print(f"  {label:32s} test top-1 {rows[-1][1]['test_top1']:.3f}  macro-F1 "
              f"{rows[-1][1]['test_macro_f1']:.3f}  (train acc {rows[-1][1]['train_acc']:.2f})", flush=True)
    return rows


def compare(work: Path, data: learning.Data, seeds: list[int], fractions: list[float],
            pretrain_epochs: int, epochs: int, masking: str, schedule: str = "two_phase",
            draws: int = 1, validate: bool = True, layer_decay: float | None = None) -> dict:
    """{fraction: [(label draw, pretrained result, scratch result)]}: per pretraining seed,
    ``draws`` label subsets (label seeds ``seed * draws + j``), the pretrained arm fine-tuned
    with ``schedule``, the scratch arm with the command's default (an encoder from scratch trains
    whole from the first step either way)."""
    table: dict = {f: [] for f in fractions}
    embed = learning.PRETRAIN.get("embed", PretrainConfig().embed)
    decay = {} if layer_decay is None else {"layer_decay": layer_decay}
    tail = f"{schedule}{'' if layer_decay is None else f'-ld{layer_decay}'}{'' if validate else '-noval'}"
    for seed in seeds:
        folder = learning.pretrain(work, f"pt-{masking}-{embed}-e{pretrain_epochs}-s{seed}", data, masking,
                                   pretrain_epochs, seed)
        last = learning.epoch_records(folder)[-1]
        print(f"  pretrained seed {seed}: acc_moving {last['acc_moving']:.3f} (baseline "
              f"{last['acc_moving_baseline']:.3f}), info_gain_moving {last['info_gain_moving']:.3f} nats", flush=True)
        for fraction in fractions:
            for label_seed in range(seed * draws, seed * draws + draws):
                common = {"label_fraction": fraction, "label_seed": label_seed, "epochs": epochs,
                          "validate": validate}
                pre = learning.finetune(work, f"ft-{masking}-{embed}-e{pretrain_epochs}-s{seed}-l{label_seed}-"
                                        f"f{fraction}-{tail}", data, seed, pretrained=str(folder / "last.pt"),
                                        schedule=schedule, **decay, **common)
                scratch = learning.finetune(work, f"scratch-{embed}-s{seed}-l{label_seed}-f{fraction}-"
                                            f"{'val' if validate else 'noval'}", data, seed, **common)
                table[fraction].append((label_seed, pre, scratch))
                print(f"  seed {seed} draw {label_seed} {fraction:>5.0%}: pretrained {pre['test_macro_f1']:.3f} "
                      f"vs scratch {scratch['test_macro_f1']:.3f} macro-F1", flush=True)
    return table


def report(table: dict) -> str:
    lines = ["| labels | paired runs | scratch top-1 | pretrained top-1 | diff top-1 [95% CI] | scratch macro-F1 | "
             "pretrained macro-F1 | diff macro-F1 [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for fraction, runs in table.items():
        cells = [f"{fraction:.0%}", str(len(runs))]
        for metric in ("test_top1", "test_macro_f1"):
            pre = [p[metric] for _, p, _ in runs]
            scratch = [s[metric] for _, _, s in runs]
            mean, lo, hi = learning.bootstrap_ci([a - b for a, b in zip(pre, scratch)])
            cells += [f"{sum(scratch) / len(scratch):.3f}", f"{sum(pre) / len(pre):.3f}",
                      f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fractions = sorted(table)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in ((1, "pretrained"), (2, "scratch")):
        values = [[run[key]["test_macro_f1"] for run in table[f]] for f in fractions]
        means = [np.mean(v) for v in values]
        errs = [np.std(v) for v in values]
        ax.errorbar([100 * f for f in fractions], means, yerr=errs, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training clips (%)")
    ax.set_ylabel("test macro-F1 (mean ± sd over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = learning.arguments(__doc__, seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25, 0.1])
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=50, help="fine-tuning epochs")
    parser.add_argument("--masking", default="mgm")
    parser.add_argument("--schedule", choices=["two_phase", "full"], default="two_phase",
                        help="fine-tuning schedule of the pretrained arm")
    parser.add_argument("--layer-decay", type=float, default=None,
                        help="the pretrained arm's layer-wise LR decay with --schedule full (the command's "
                             "default 0.75 if not given; 1.0: the scratch arm's LR everywhere)")
    parser.add_argument("--draws", type=int, default=1, help="label subsets per pretraining seed")
    parser.add_argument("--no-val", action="store_true",
                        help="no validation after each epoch (both arms; several times faster at 10%% labels)")
    parser.add_argument("--no-gates", action="store_true")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("label_efficiency.png"))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = learning.start(args, "label efficiency")
    if not args.no_gates:
        print("gates (test split):")
        gates(args.work_dir, data, args.epochs)
    table = compare(args.work_dir, data, args.seeds, args.fractions, args.pretrain_epochs, args.epochs,
                    args.masking, args.schedule, args.draws, validate=not args.no_val, layer_decay=args.layer_decay)
    print(report(table))
    plot(table, args.plot)
    print(f"plot: {args.plot}; {time.perf_counter() - t0:.0f} s in all, load {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
