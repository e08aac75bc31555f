"""The Motion encoder's convolutional token embedding (``embed='conv'``) and the classifier's
per-step temporal tokens (``temporal_tokens='step'``)."""

from __future__ import annotations

import pytest
import torch

from mvmae.train.model import ClassifierConfig, build_classifier
from mvmae.train.motion_encoder import MotionEncoder, motion_encoder_config
from mvmae.train.tokenizer import TokenSpec

GRID = (2, 3, 4)  # (T', h', w'): N = 24 tokens, time-major
N = 24


def _conv_encoder() -> MotionEncoder:
    torch.manual_seed(0)
    return MotionEncoder(motion_encoder_config("micro", grid=GRID, embed="conv")).eval()


def _index(t: int, y: int, x: int) -> int:
    return (t * GRID[1] + y) * GRID[2] + x


def test_conv_embedding_sees_neighbours_in_space_and_time_and_nothing_further():
    enc = _conv_encoder()
    tokens = torch.randn(1, N, 4)
    with torch.no_grad():
        base = enc._conv_embed(tokens, None)  # (1, N, C)
        # Token (0, 1, 2) reads its neighbour in space (0, 1, 1) and in time (1, 1, 2) ...
        for neighbour in (_index(0, 1, 1), _index(1, 1, 2)):
            changed = tokens.clone()
            changed[0, neighbour] += 5.0
            assert not torch.allclose(enc._conv_embed(changed, None)[0, _index(0, 1, 2)], base[0, _index(0, 1, 2)])
        # ... but not a token two cells away, outside its 3x3x3 window.
        changed = tokens.clone()
        changed[0, _index(0, 1, 0)] += 5.0
        torch.testing.assert_close(enc._conv_embed(changed, None)[0, _index(0, 1, 2)], base[0, _index(0, 1, 2)])


def test_conv_embedding_does_not_leak_tokens_the_encoder_must_not_see():
    enc = _conv_encoder()
    tokens = torch.randn(2, N, 4)
    perm = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(b)) for b in range(2)])
    keep, hidden = perm[:, :6].sort(1).values, perm[:, 6:].sort(1).values
    changed = tokens.clone()
    changed.scatter_(1, hidden.unsqueeze(-1).expand(-1, -1, 4), 100.0)
    with torch.no_grad():
        torch.testing.assert_close(enc(changed, keep), enc(tokens, keep))
        assert enc(tokens, keep).shape == (2, 6, 64)
        assert not torch.allclose(enc(changed), enc(tokens))  # seen tokens do count
        # All kept equals no index: zeroing nothing changes nothing.
        torch.testing.assert_close(enc(tokens, torch.arange(N).expand(2, N)), enc(tokens))


def test_embed_is_validated():
    with pytest.raises(ValueError, match="embed"):
        motion_encoder_config("micro", embed="patch")


SPEC = TokenSpec(num_frames=8, mv_size=4, iframe_size=32, tubelet_frames=2, tubelet_cells=1)  # T' = 4


def _classifier(**model) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ClassifierConfig(num_classes=3, inputs="mv", motion_size="micro", num_segments=2, dim=32,
                           temporal_heads=4, **model)
    return build_classifier(cfg, SPEC).eval()


@pytest.mark.parametrize("pool", ["motion", "mean", "attention"])
def test_step_tokens_give_the_temporal_transformer_one_token_per_time_step(pool):
    model = _classifier(temporal_tokens="step", motion_pool=pool, motion_embed="conv")
    assert model.pos.shape == (1, 2 * 4 + 1, 32)  # CLS + segments x T'
    mv, valid = torch.randn(2, 16, 2, 4, 4), torch.ones(2, 16, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        assert model.motion_features(mv, valid).shape == (2, 8, 64)
        assert model(mv, valid, None).shape == (2, 3)


def test_step_tokens_keep_the_order_inside_a_segment_that_segment_tokens_pool_away():
    """Per step, the motion pool is the segment's pool split by time: their motion-weighted mean
    over a segment's steps equals the segment token."""
    seg, step = _classifier(), _classifier(temporal_tokens="step")
    step.load_state_dict(seg.state_dict() | {"pos": step.pos}, strict=True)
    mv, valid = torch.randn(1, 16, 2, 4, 4), torch.ones(1, 16, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        per_step = step.motion_features(mv, valid).reshape(1, 2, 4, -1)  # (B, S, T', C)
        per_segment = seg.motion_features(mv, valid)  # (B, S, C)
        from mvmae.train.tokenizer import tokenize

        _, motion = tokenize(mv.reshape(2, 8, 2, 4, 4), valid.reshape(2, 8, 4, 4), SPEC)
        weight = (motion.norm(dim=-1) + 1e-3).sum(dim=(2, 3)).reshape(1, 2, 4, 1)  # (B, S, T', 1)
        torch.testing.assert_close((per_step * weight).sum(2) / weight.sum(2), per_segment)
    with pytest.raises(ValueError, match="temporal_tokens"):
        ClassifierConfig(temporal_tokens="frame")


def test_a_checkpoint_from_before_embed_existed_loads_as_the_linear_embedding_it_ran_with(tmp_path):
    """Checkpoints written before ``motion_embed`` existed ran with 'linear' (the default then);
    today's default is 'conv': eval, predict and export must still rebuild the model they hold,
    and a resume under today's default must be refused by name, not crash on the weights."""
    from mvmae.train import checkpoint as ckpt
    from mvmae.train.config import config_to_dict
    from mvmae.train.finetune import FinetuneConfig, load_classifier
    from mvmae.train.resume import ResumeError, check_resume_config

    cfg = FinetuneConfig(train=["x.tar"], model=ClassifierConfig(num_classes=3, inputs="mv", motion_size="micro",
                                                                 num_segments=2, dim=32, temporal_heads=4,
                                                                 motion_embed="linear"), tokens=SPEC)
    assert FinetuneConfig().model.motion_embed == "conv"
    model = build_classifier(cfg.model, cfg.tokens)
    old = config_to_dict(cfg)
    del old["model"]["motion_embed"]
    state = {ckpt.CONFIG: old, ckpt.MODEL: model.state_dict(), ckpt.EPOCH: 0,
             ckpt.EXTRA: {"kind": "classifier", "classes": ["a", "b", "c"]}}
    path = ckpt.save_checkpoint(tmp_path / "old.pt", state)
    loaded, classes, loaded_cfg = load_classifier(path)
    assert loaded_cfg.model.motion_embed == "linear" and classes == ["a", "b", "c"]
    assert isinstance(loaded.motion_encoder.embed, torch.nn.Linear)
    with pytest.raises(ResumeError, match=r"model.motion_embed 'linear' -> 'conv'"):
        check_resume_config(ckpt.load_checkpoint(path), FinetuneConfig(
            train=["x.tar"], model=ClassifierConfig(**{**old["model"], "motion_embed": "conv"}), tokens=SPEC), path)
