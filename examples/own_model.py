"""A model of your own trained from mvmae shards (README, "Your own model"): a small 3D CNN over
the motion-vector field of each clip, through ``mvmae.dataloader``.

    python examples/own_model.py --train 'shards/train-{000000..000009}.tar' \
        --val 'shards/val-{000000..000001}.tar' --epochs 10
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from mvmae.dataloader import ClipConfig, class_names, clip_loader

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--train", nargs="+", required=True, help="train shard URLs or brace patterns")
parser.add_argument("--val", nargs="+", required=True, help="validation shard URLs or brace patterns")
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--workers", type=int, default=2)
args = parser.parse_args()

torch.manual_seed(0)
classes = class_names(args.train)
# 16 MV frames of 8 x 8 cells, no I-frame (no JPEG is decoded); no flips: left/right are classes.
train = clip_loader(args.train, ClipConfig(num_frames=16, mv_size=8, num_iframes=0, flip_prob=0.0),
                    batch_size=4, workers=args.workers, seed=0)
val = clip_loader(args.val, ClipConfig(num_frames=16, mv_size=8, num_iframes=0, mode="center"),
                  batch_size=16, train=False, workers=0)
model = nn.Sequential(nn.Conv3d(3, 32, 3, padding=1), nn.GELU(), nn.MaxPool3d(2),
                      nn.Conv3d(32, 64, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool3d(1),
                      nn.Flatten(), nn.Linear(64, len(classes)))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)


def inputs(batch: dict) -> torch.Tensor:
    """(dx, dy, valid) as channels: (B, 3, T, h, w); vectors in cells of 4 px per frame."""
    mv = batch["mv"].transpose(1, 2) / 4  # (B, 2, T, h, w)
    return torch.cat([mv, batch["valid"][:, None].float()], 1)


for epoch in range(args.epochs):
    train.dataset.set_epoch(epoch)
    losses = []
    for batch in train:
        loss = F.cross_entropy(model(inputs(batch)), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"epoch {epoch}: loss {sum(losses) / len(losses):.4f} over {len(losses)} batches")

model.eval()
with torch.no_grad():
    hits = [(model(inputs(b)).argmax(1) == b["label"]).tolist() for b in val]
hits = sum(hits, [])
print(f"val top-1 {sum(hits) / len(hits):.3f} over {len(hits)} clips of {len(classes)} classes")
