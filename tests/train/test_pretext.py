"""The masked-motion pretext: which targets count, how static ones are weighted, and the
diagnostics that tell a learned pretext from one that predicts "static" everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from mvmae.shards.reader import build_eval_pipeline
from mvmae.train.codebook import Codebook
from mvmae.train.masking import build_masking
from mvmae.train.pretext import PretextOptions, PretextStats, _ids_loss, _weights, pretext_loss
from mvmae.train.pretrain import PretrainConfig, build_model
from mvmae.train.tokenizer import TokenSpec

K = 8


def _logits_for(ids: torch.Tensor, confident: float = 20.0) -> torch.Tensor:
    """Logits (M, K) that put almost all probability on ``ids`` (M,)."""
    return torch.nn.functional.one_hot(ids, K).float() * confident


def test_a_perfect_predictor_gains_the_targets_entropy():
    ids = torch.tensor([0, 0, 0, 0, 0, 0, 3, 5, 5, 7])
    valid = torch.ones_like(ids, dtype=torch.bool)
    stats = PretextStats(K)
    _ids_loss(_logits_for(ids), ids, _weights(ids, valid, 1.0), valid, stats)
    m = stats.metrics("ids")
    p = torch.tensor([6, 1, 2, 1]) / 10
    entropy = float(-(p * p.log()).sum())
    assert m["target_entropy"] == pytest.approx(entropy, rel=1e-6)
    assert m["info_gain"] == pytest.approx(entropy, abs=1e-3)
    moving = torch.tensor([1, 2, 1]) / 4
    assert m["info_gain_moving"] == pytest.approx(float(-(moving * moving.log()).sum()), abs=1e-3)
    assert m["acc_moving"] == 1.0 and m["acc_moving_baseline"] == pytest.approx(2 / 4)
    assert m["masked_acc"] == 1.0 and m["static_target_ratio"] == pytest.approx(0.6)


def test_always_static_scores_the_static_share_and_gains_nothing():
    """The failure the diagnostics exist for: 60% masked accuracy, none on moving targets, and
    (answering the targets' own prior) no information gained."""
    ids = torch.tensor([0, 0, 0, 0, 0, 0, 3, 5, 5, 7])
    valid = torch.ones_like(ids, dtype=torch.bool)
    prior = torch.bincount(ids, minlength=K).float() / len(ids)
    logits = prior.clamp(min=1e-12).log().expand(len(ids), K)  # the marginal distribution
    stats = PretextStats(K)
    _ids_loss(logits, ids, _weights(ids, valid, 1.0), valid, stats)
    m = stats.metrics("ids")
    assert m["masked_acc"] == pytest.approx(0.6) and m["acc_moving"] == 0.0
    assert m["info_gain"] == pytest.approx(0.0, abs=1e-5)


def test_invalid_targets_are_left_out_and_static_ones_weighted():
    ids = torch.tensor([0, 0, 4, 4])
    valid = torch.tensor([True, True, True, False])
    weights = _weights(ids, valid, 0.25)
    assert weights.tolist() == [0.25, 0.25, 1.0, 0.0]
    logits = torch.zeros(4, K)
    base = _ids_loss(logits, ids, weights, valid, PretextStats(K))
    changed = logits.clone()
    changed[3, 4] = 50.0  # the invalid target's prediction does not matter
    assert _ids_loss(changed, ids, weights, valid, PretextStats(K)) == pytest.approx(float(base))
    stats = PretextStats(K)
    _ids_loss(logits, ids, _weights(ids, valid, 0.0), valid, stats)
    assert stats.get("targets") == 3 and stats.get("moving_targets") == 1
    assert stats.code_counts.tolist()[:5] == [2, 0, 0, 0, 1]


def test_stats_add_up_and_empty_ones_are_nan():
    a, b = PretextStats(K), PretextStats(K)
    a.add("clips", 2)
    b.add("clips", 3)
    a += b
    assert a.get("clips") == 5
    assert math.isnan(PretextStats(K).metrics("ids")["acc_moving"])


def test_pretext_loss_on_real_shards_counts_what_the_encoder_sees(synth_shards, synth_codebook):
    """A real batch (mvmae synth, codebook of the shards) through a micro model: the visibility
    diagnostics match the masks, only valid targets are counted, and the loss backpropagates."""
    book = Codebook.load(synth_codebook)
    spec = TokenSpec(**book.token_spec)
    pipe = build_eval_pipeline(synth_shards["train"], spec.clip_config("center", num_iframes=0), 4)
    batch = next(iter(pipe))
    model = build_model(PretrainConfig(model_size="micro", decoder_dim=32, decoder_depth=1, decoder_heads=2),
                        spec, book.size)
    masking = build_masking("mgm", mask_ratio=0.9, px_per_token=spec.px_per_token)
    loss, stats = pretext_loss(model, batch, spec, book, masking, PretextOptions(), torch.Generator().manual_seed(0),
                               torch.device("cpu"))
    loss.backward()
    assert math.isfinite(loss.item()) and model.encoder.embed.weight.grad is not None
    m = stats.metrics("ids")
    assert stats.get("clips") == 4 and stats.get("clips_moving") == 4  # every synth clip moves
    assert m["visible_moving_mean"] > 0 and m["no_visible_motion_ratio"] == 0.0  # mgm keeps a quarter
    num_masked = masking.counts(tuple(spec.grid.shape))[0]
    assert 0 < stats.get("targets") <= 4 * num_masked
    assert stats.code_counts.sum() == stats.get("targets")
