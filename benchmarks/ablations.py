"""Ablations of the MV-MAE classifier on the trajectories set, several seeds each.

    python benchmarks/ablations.py [--seeds 0 1 2] [--epochs N] [--fraction F] [--no-val]
        [--work-dir DIR] [--pretrained CKPT]

One factor changed at a time from the reference (``--inputs mv``, concat fusion, no DPTAM, from
scratch, the command's defaults otherwise; ``learning.FINETUNE`` for the CPU-sized model):
inputs mv / iframe / both; fusion concat / afm (with both inputs); DPTAM on / off; pretrained /
scratch (with ``--pretrained``, a checkpoint of ``mvmae pretrain``, e.g. one of
label_efficiency.py's runs). The set has one I-frame per clip and classes that differ by motion
alone, so the I-frame path should add nothing: an ablation that says otherwise found a leak.
Test top-1 and macro-F1, mean and spread over seeds, and each variant's paired difference to the
reference with a bootstrap 95% interval. ``--fraction``: fine-tune on that share of the labelled
clips (seed s draws subset s, the same for every variant); ``--no-val``: no validation after each
epoch (every variant alike), which with ``--fraction 0.1`` makes a run a few minutes on one core.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning  # noqa: E402
from common import loadavg  # noqa: E402

VARIANTS = {
    "reference (mv, concat, no DPTAM, scratch)": {},
    "inputs iframe": {"model.inputs": "iframe", "model.context_model": "resnet18"},
    "inputs both": {"model.inputs": "both", "model.context_model": "resnet18"},
    "inputs both, AFM fusion": {"model.inputs": "both", "model.context_model": "resnet18", "model.fusion": "afm"},
    "DPTAM on": {"model.dptam": True},
}


def main(argv: list[str] | None = None) -> int:
    parser = learning.arguments(__doc__, seeds=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--pretrained", default="", help="a pretraining checkpoint for the pretrained variant")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the labelled clips")
    parser.add_argument("--no-val", action="store_true", help="no validation after each epoch")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = learning.start(args, "ablations")
    variants = dict(VARIANTS)
    if args.pretrained:
        variants["pretrained"] = {"pretrained": args.pretrained}
    results = {}
    for name, options in variants.items():
        tag = "abl-" + "".join(c for c in name if c.isalnum())[:40]
        budget = "" if args.fraction == 1.0 and not args.no_val else f"-f{args.fraction}{'-noval' if args.no_val else ''}"
        subset = {"label_fraction": args.fraction, "validate": not args.no_val}
        results[name] = [learning.finetune(args.work_dir, f"{tag}-s{s}{budget}", data, s, epochs=args.epochs,
                                           label_seed=s, **subset, **options) for s in args.seeds]
        print(f"  {name}: done", flush=True)
    reference = results[next(iter(VARIANTS))]
    print("| variant | test top-1 (mean ± sd) | test macro-F1 (mean ± sd) | diff macro-F1 vs reference [95% CI] |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        top1 = [r["test_top1"] for r in runs]
        f1 = [r["test_macro_f1"] for r in runs]
        diff = learning.bootstrap_ci([r["test_macro_f1"] - b["test_macro_f1"] for r, b in zip(runs, reference)])
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"| {name} | {statistics.mean(top1):.3f} ± {sd(top1):.3f} | {statistics.mean(f1):.3f} ± {sd(f1):.3f} | "
              f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}] |")
    print(f"{time.perf_counter() - t0:.0f} s in all, load {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
