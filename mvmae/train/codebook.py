"""A discrete codebook of motion tokens: the targets of masked motion pretraining.

Token vectors come from ``mvmae.train.tokens`` (tubelets of t frames x p x p cells, (dx, dy) per
cell, after camera compensation and normalisation). Code 0 is reserved for *static* motion:
every token whose mean vector length is below ``static_threshold`` maps to it, and its centroid
is the zero vector; codes 1..K-1 are learnt by mini-batch k-means (scikit-learn) over the moving
tokens of a sample streamed from the shards. ``token='vector'`` reproduces the published MV-MAE
codebook: single (dx, dy) vectors (a token is represented by its mean vector).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CODEBOOK_VERSION = 1


@dataclass
class CodebookConfig:
    """size: number of codes K (code 0 = static). token: 'tubelet' clusters whole token vectors,
    'vector' clusters single (dx, dy) vectors. static_threshold: mean vector length (in the
    normalised units of the tokens: x the token spec's scale_px px/frame) below which a token is
    static; the default 0.125 is 0.5 px/frame at the default scale_px 4. max_tokens: sample size."""

    size: int = 1024
    token: str = "tubelet"
    static_threshold: float = 0.125
    max_tokens: int = 200_000
    batch_size: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"codebook size must be >= 2 (code 0 is static), got {self.size}")
        if self.token not in ("tubelet", "vector"):
            raise ValueError(f"token must be 'tubelet' or 'vector', got {self.token!r}")
        if self.static_threshold < 0 or self.max_tokens < 1:
            raise ValueError("static_threshold must be >= 0 and max_tokens >= 1")


def mean_vector(tokens: np.ndarray | torch.Tensor):
    """(N, D) token vectors, layout (..., c) with c = (dx, dy) last -> (N, 2) mean (dx, dy)."""
    return tokens.reshape(tokens.shape[0], -1, 2).mean(1)


class Codebook:
    """Centroids float32 (K, D'), D' = token dim ('tubelet') or 2 ('vector'); row 0 is static."""

    def __init__(self, centroids: np.ndarray, config: CodebookConfig, token_dim: int,
                 stats: dict | None = None, token_spec: dict | None = None) -> None:
        self.centroids = np.asarray(centroids, np.float32)
        self.config = config
        self.token_dim = token_dim
        self.stats = stats or {}
        self.token_spec = token_spec or {}  # TokenSpec fields: how tokens were made
        self._torch: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(self.centroids)

    def _features(self, tokens):
        return mean_vector(tokens) if self.config.token == "vector" else tokens

    def assign(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, D) float tokens -> (N,) int64 code ids (static tokens -> 0)."""
        if self._torch is None or self._torch.device != tokens.device:
            self._torch = torch.from_numpy(self.centroids).to(tokens.device)
        feats = self._features(tokens.float())  # (N, D')
        dist = torch.cdist(feats, self._torch[1:])  # (N, K-1)
        ids = dist.argmin(dim=1) + 1
        static = mean_vector(tokens.float()).norm(dim=1) < self.config.static_threshold
        return torch.where(static, torch.zeros_like(ids), ids)

    def usage(self, tokens: torch.Tensor) -> dict:
        """Code usage on ``tokens``: perplexity (over all tokens, and over the moving ones: how
        many moving codes are really in use), dead codes, static share, quantization error."""
        ids = self.assign(tokens)
        counts = torch.bincount(ids, minlength=self.size).double()
        p = counts / counts.sum()
        nz = p[p > 0]
        moving = counts[1:][counts[1:] > 0] / counts[1:].sum().clamp(min=1)
        recon = torch.from_numpy(self.centroids).to(tokens.device)[ids]  # (N, D')
        err = (self._features(tokens.float()) - recon).norm(dim=1)
        return {
            "num_tokens": int(len(ids)),
            "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
            "moving_perplexity": float(torch.exp(-(moving * moving.log()).sum())),
            "dead_codes": int((counts[1:] == 0).sum()),
            "static_ratio": float(p[0]),
            "quantization_error": float(err.mean()),
        }

    def digest(self) -> str:
        """SHA-256 (hex) of what decides the tokens' codes: the centroids, the token type, the
        static threshold, the token dim and spec; not how the codes were fitted, nor where the
        file lies."""
        meta = {"token": self.config.token, "static_threshold": self.config.static_threshold,
                "token_dim": self.token_dim, "token_spec": self.token_spec}
        h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.centroids, np.float32).tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        meta = {"version": CODEBOOK_VERSION, "config": asdict(self.config),
                "token_dim": self.token_dim, "stats": self.stats, "token_spec": self.token_spec}
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, centroids=self.centroids, meta=np.str_(json.dumps(meta)))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Codebook":
        try:
            with np.load(path, allow_pickle=False) as z:
                centroids, meta = z["centroids"], json.loads(str(z["meta"]))
        except FileNotFoundError as exc:
            raise ValueError(f"{path}: codebook not found") from exc
        # EOFError: empty file; BadZipFile: damaged .npz; TypeError: a plain .npy (no context manager).
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, TypeError) as exc:
            raise ValueError(f"{path}: not an mvmae codebook ({type(exc).__name__}: {exc})") from exc
        if meta.get("version") != CODEBOOK_VERSION:
            raise ValueError(f"{path}: codebook version {meta.get('version')}, this mvmae reads "
                             f"{CODEBOOK_VERSION}")
        return cls(centroids, CodebookConfig(**meta["config"]), meta["token_dim"], meta["stats"],
                   meta.get("token_spec"))


def fit_codebook(tokens: np.ndarray, config: CodebookConfig) -> Codebook:
    """Learn codes 1..K-1 by mini-batch k-means over the moving tokens of ``tokens`` (N, D).

    Deterministic for ``config.seed``. With fewer distinct moving tokens than codes, the extra
    codes stay unused (reported as dead codes).
    """
    from sklearn.cluster import MiniBatchKMeans

    tokens = np.asarray(tokens, np.float32)
    if len(tokens) > config.max_tokens:
        keep = np.random.default_rng(config.seed).choice(len(tokens), config.max_tokens, replace=False)
        tokens = tokens[np.sort(keep)]
    moving = np.linalg.norm(mean_vector(tokens), axis=1) >= config.static_threshold
    feats = mean_vector(tokens[moving]) if config.token == "vector" else tokens[moving]
    dim = feats.shape[1] if feats.ndim == 2 else (2 if config.token == "vector" else tokens.shape[1])
    centroids = np.zeros((config.size, dim), np.float32)
    num_clusters = min(config.size - 1, len(np.unique(feats, axis=0)) if len(feats) else 0)
    if num_clusters > 0:
        km = MiniBatchKMeans(n_clusters=num_clusters, batch_size=config.batch_size,
                             random_state=config.seed, n_init=3, max_no_improvement=20)
        km.fit(feats)
        centroids[1:1 + num_clusters] = km.cluster_centers_
        # Unused rows sit far away so nothing is assigned to them.
        centroids[1 + num_clusters:] = 1e6
    else:
        centroids[1:] = 1e6
        log.warning("no moving tokens in the sample: the codebook has only the static code")
    book = Codebook(centroids, config, token_dim=tokens.shape[1])
    book.stats = book.usage(torch.from_numpy(tokens))
    return book


def collect_tokens(batches, spec, max_tokens: int, seed: int = 0) -> np.ndarray:
    """Token vectors (N, D) from an iterable of reader batches (dicts with mv, valid), at most
    ``4 * max_tokens`` kept (a seeded random subset of each batch once over budget)."""
    from mvmae.train.tokenizer import tokenize

    rng = np.random.default_rng(seed)
    chunks, total = [], 0
    for batch in batches:
        tokens, _ = tokenize(batch["mv"], batch["valid"], spec)  # (B, N, D)
        flat = tokens.reshape(-1, tokens.shape[-1]).numpy()  # (B * N, D)
        room = 4 * max_tokens - total
        if room <= 0:
            break
        if len(flat) > room:
            flat = flat[np.sort(rng.choice(len(flat), room, replace=False))]
        chunks.append(flat)
        total += len(flat)
    if not chunks:
        raise ValueError("no clips could be read from the shards to build the codebook")
    return np.concatenate(chunks)


def build_codebook(urls: list[str], spec, config: CodebookConfig, clips_per_video: int = 2,
                   batch_size: int = 32, workers: int = 2, progress=None) -> Codebook:
    """Stream clips from shard ``urls``, tokenize them with ``spec`` and fit the codebook; the
    spec is stored in it. ``progress`` wraps the batch iterator (e.g. tqdm)."""
    from mvmae.shards.reader import build_eval_pipeline, make_loader

    clip = (spec.clip_config("multi", num_clips=clips_per_video, num_iframes=0) if clips_per_video > 1
            else spec.clip_config("center", num_iframes=0))  # motion only: no I-frame decoded
    batches = make_loader(build_eval_pipeline(list(urls), clip, batch_size), workers)
    tokens = collect_tokens(progress(batches) if progress else batches, spec, config.max_tokens,
                            config.seed)
    book = fit_codebook(tokens, config)
    book.token_spec = spec.to_dict()
    return book
