"""What masked motion pretraining put in the Motion encoder, read with the encoder frozen.

    python benchmarks/frozen_probe.py [--seeds 0] [--maskings random tube mgm mofo videoms]
        [--checkpoints 2 4] [--pretrain-epochs 4] [--fraction 0.1] [--work-dir DIR]

Issue 14 asks for "a probe on per-time features (concatenated, not averaged) and kNN at each
pretraining checkpoint". For each pretraining run (``pt-<masking>-conv-e<N>-s<seed>``, the runs of
masking_convergence.py and label_efficiency.py, made here when missing), each checkpoint epoch,
and a randomly initialised encoder of the same architecture (seeded): the Motion encoder
is frozen and every train and test clip encoded, 4 segments of 16 MV frames, centre crop. Per
time step (4 segments x 4 tubelet steps) the tokens are pooled over space weighted by their
motion, as fine-tuning pools them (``motion_pool: motion``), and the 16 step features are
concatenated (an average over time would erase the order that tells a left turn from a right
one). Two probes on them, each fitted on all labelled train clips and on the 10% subset that
fine-tuning uses (``stratified_subset``, label seed = seed), scored on test: kNN (k = 5, cosine
distance on standardised features; k = 1 on the 10% subset, about 5 clips a class) and a
logistic regression (standardised features). A pretext that put motion structure into the
encoder should lift both above the random encoder; fine-tuning results are in label_efficiency.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning  # noqa: E402
from common import loadavg  # noqa: E402

from mvmae.shards.reader import build_eval_pipeline, make_loader  # noqa: E402
from mvmae.train.labels import stratified_subset  # noqa: E402
from mvmae.train.model import ClassifierConfig, build_classifier, classifier_clip  # noqa: E402
from mvmae.train.pretrain import PretrainConfig  # noqa: E402
from mvmae.train.pretrained import load_pretrained_motion  # noqa: E402


def classifier(seed: int, num_classes: int) -> torch.nn.Module:
    """The fine-tuned model's motion path (micro encoder, conv embedding, one feature per time
    step, motion-weighted pooling), built with ``seed``: its Motion encoder is the random start."""
    cfg = ClassifierConfig(inputs="mv", motion_size="micro", motion_embed="conv", num_segments=learning.SEGMENTS,
                           motion_pool="motion", temporal_tokens="step", num_classes=num_classes)
    torch.manual_seed(seed)
    return build_classifier(cfg, learning.SPEC).eval()


@torch.no_grad()
def features(model: torch.nn.Module, urls: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(keys, labels (V,), features (V, S * T' * C)): per-step motion features, concatenated."""
    clip = classifier_clip(model.cfg, learning.SPEC, "center")
    keys, labels, feats = [], [], []
    for batch in make_loader(build_eval_pipeline(urls, clip, 32), 0):
        x = model.motion_features(batch["mv"], batch["valid"])  # (B, S * T', C)
        feats.append(x.flatten(1).numpy())
        labels.append(batch["label"].numpy())
        keys.extend(batch["key"])
    return keys, np.concatenate(labels), np.concatenate(feats)


def probes(train: tuple, test: tuple, subset: set[str]) -> dict[str, float]:
    """Test top-1 of kNN and logistic regression fitted on all train clips and on ``subset``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keys, y, x = train
    _, y_test, x_test = test
    out = {}
    for name, rows in (("100%", np.ones(len(keys), bool)), ("10%", np.array([k in subset for k in keys]))):
        k = 5 if name == "100%" else 1
        knn = make_pipeline(StandardScaler(), KNeighborsClassifier(k, metric="cosine")).fit(x[rows], y[rows])
        linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=0)).fit(x[rows], y[rows])
        out[f"knn {name}"] = float(knn.score(x_test, y_test))
        out[f"linear {name}"] = float(linear.score(x_test, y_test))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = learning.arguments(__doc__, seeds=[0])
    parser.add_argument("--maskings", nargs="+", default=["random", "tube", "mgm", "mofo", "videoms"])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[2, 4], help="pretraining epochs to probe")
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = learning.start(args, "frozen-encoder probes")
    embed = learning.PRETRAIN.get("embed", PretrainConfig().embed)
    num_classes = len(json.loads(Path(data.classes).read_text()))
    columns = ["knn 100%", "linear 100%", "knn 10%", "linear 10%"]
    print("| encoder | seed | " + " | ".join(f"test top-1, {c}" for c in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for seed in args.seeds:
        model = classifier(seed, num_classes)
        train = features(model, data.train)
        subset = set(stratified_subset(list(zip(train[0], train[1].tolist())), args.fraction, seed))
        rows = [("random init", train, features(model, data.test))]
        for masking in args.maskings:
            folder = learning.pretrain(args.work_dir, f"pt-{masking}-{embed}-e{args.pretrain_epochs}-s{seed}", data,
                                       masking, args.pretrain_epochs, seed)
            for epoch in args.checkpoints:
                pretrained = load_pretrained_motion(str(folder / f"epoch_{epoch - 1:04d}.pt"))
                model.motion_encoder.load_state_dict(pretrained.weights)
                rows.append((f"{masking}, {epoch} ep.", features(model, data.train), features(model, data.test)))
        for name, tr, te in rows:
            scores = probes(tr, te, subset)
            print(f"| {name} | {seed} | " + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |", flush=True)
    print(f"chance {1 / num_classes:.3f}; {time.perf_counter() - t0:.0f} s in all, load {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
