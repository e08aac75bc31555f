"""``mvmae predict``: a trained classifier on raw videos, no shards.

Each video is extracted in memory (in worker processes) with the options the training shards were
extracted with (recorded in the checkpoint by ``mvmae train``), encoded as ``mvmae extract run``
stores it in a shard (MVs quantized to 0.25 px per frame, I-frames as JPEG) and read back through the
reader ``mvmae eval`` uses, so the model sees what ``mvmae eval`` would see on shards of the same
videos: the same ``clips`` x ``crops`` views (clip config and token spec from the checkpoint), the
softmax of each view averaged per video, the checkpoint's class names. A whole video is one sample
(``extract run`` cuts videos longer than ``--max-seconds`` into segments; predict does not).

A video that cannot be extracted (missing, not a video, not H.264, damaged beyond decoding) or cut
into clips gets an error naming it; the others are predicted.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from mvmae.eval.evaluate import CROPS
from mvmae.eval.views import softmax
from mvmae.extract.config import ExtractConfig
from mvmae.shards.encoded import encode_video
from mvmae.shards.reader import collate_clips, sample_clips
from mvmae.shards.sample import SampleError
from mvmae.shards.sources import ShardClipSource
from mvmae.shards.videolist import VIDEO_SUFFIXES, VideoListError
from mvmae.train import checkpoint as ckpt
from mvmae.train.finetune import load_classifier
from mvmae.train.model import classifier_clip

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass
class PredictConfig:
    """ckpt: a classifier checkpoint of ``mvmae train``. clips, crops: views per video, as
    ``mvmae eval``. extract: ``ExtractConfig`` fields that override how the training shards were
    extracted (recorded in the checkpoint; ``extract run``'s defaults for a checkpoint of an older
    mvmae). workers: extraction processes (0: in this process). device: auto, cpu, cuda, ..."""

    ckpt: str
    clips: int = 1
    crops: int = 1
    workers: int = 2
    device: str = "auto"
    extract: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clips < 1 or not 1 <= self.crops <= len(CROPS):
            raise ValueError(f"clips must be >= 1 and crops in 1..{len(CROPS)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass
class Prediction:
    """One video's result: ``scores`` float64 (C,) mean softmax over its ``num_views`` views,
    or ``error`` (why it could not be predicted) and no scores."""

    video: str
    scores: np.ndarray | None = None
    num_views: int = 0
    error: str | None = None

    def top(self, classes: Sequence[str], k: int) -> list[dict]:
        """The ``k`` best classes, best first: ``[{"class", "index", "score"}]``."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [{"class": classes[i], "index": int(i), "score": float(self.scores[i])} for i in order]

    def record(self, classes: Sequence[str], k: int) -> dict:
        """The JSON line of ``--json`` and ``--out``."""
        if self.error is not None:
            return {"video": self.video, "error": self.error}
        return {"video": self.video, "top": self.top(classes, k), "views": self.num_views}


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Video paths from ``items``: a file (a video, or a list file ``.txt``/``.lst``/``.list`` of
    one path per line, relative to its folder, a trailing label ignored, ``#`` comments), or a
    folder (its video files, recursively, sorted). A missing path is kept: its error comes with
    the predictions. VideoListError for an unreadable list file."""
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif item.is_file() and item.suffix.lower() in LIST_SUFFIXES:
            paths += _read_list(item)
        else:
            paths.append(item)
    return paths


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VideoListError(f"{path}: cannot read the list ({exc})") from exc
    found = []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        video = path.parent / line
        if not video.exists() and len(line.split()) > 1:  # a dataset list: "path label"
            video = path.parent / line.rsplit(maxsplit=1)[0]
        found.append(video)
    return found


class Predictor:
    """A classifier checkpoint with the clip configs of its views and the extraction options of its
    training shards (``extract``): ``predict(video, sample)``."""

    def __init__(self, cfg: PredictConfig) -> None:
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if cfg.device == "auto" else cfg.device)
        self.model, self.classes, train_cfg = load_classifier(cfg.ckpt, self.device)
        recorded = ckpt.load_checkpoint(cfg.ckpt)[ckpt.EXTRA].get("extraction") or {}
        self.extract = ExtractConfig(**{**recorded, **cfg.extract})
        log.info(f"extraction: {self.extract} ({'recorded in ' + cfg.ckpt if recorded else 'defaults'}"
                 f"{', overridden: ' + str(cfg.extract) if cfg.extract else ''})")
        mode = "multi" if cfg.clips > 1 else "center"
        self.clips = [classifier_clip(train_cfg.model, train_cfg.tokens, mode, num_clips=cfg.clips, eval_crop=crop)
                      for crop in CROPS[: cfg.crops]]

    @torch.no_grad()
    def predict(self, video: str, raw: dict) -> Prediction:
        """The mean softmax over every view of sample ``raw`` (``encode_video``)."""
        try:
            views = [clip for config in self.clips for clip in sample_clips([ShardClipSource(raw)], config)]
        except SampleError as exc:
            return Prediction(video, error=f"no clip can be cut ({exc})")
        batch = collate_clips(views)
        logits = self.model(*(batch[k].to(self.device) for k in ("mv", "valid", "iframes"))).float().cpu()
        return Prediction(video, softmax(logits.numpy()).mean(0), num_views=len(views))


def predict_videos(cfg: PredictConfig, videos: Sequence[str | Path]) -> tuple[Predictor, Iterator[Prediction]]:
    """(the predictor: its ``classes``, its ``extract`` options; the predictions of ``videos`` in
    their order, as they come)."""
    predictor = Predictor(cfg)
    return predictor, _predictions(predictor, cfg, [str(v) for v in videos])


def _predictions(predictor: Predictor, cfg: PredictConfig, videos: list[str]) -> Iterator[Prediction]:
    if cfg.workers == 0:
        encoded: Iterable = (encode_video(v, predictor.extract) for v in videos)
        yield from _predict_encoded(predictor, videos, encoded)
        return
    # spawn: a forked child would inherit this process's torch and PyAV threads (see job.py).
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        encoded = pool.map(encode_video, videos, [predictor.extract] * len(videos))
        yield from _predict_encoded(predictor, videos, encoded)


def _predict_encoded(predictor: Predictor, videos: list[str], encoded: Iterable) -> Iterator[Prediction]:
    for video, (raw, error) in zip(videos, encoded):
        yield Prediction(video, error=error) if raw is None else predictor.predict(video, raw)
