"""Motion encoder, masked decoder and the MV-MAE pretraining model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvmae.train.motion_encoder import (
    MOTION_ENCODER_SIZES, MaskedMotionDecoder, MaskedMotionModel, MotionDecoderConfig,
    MotionEncoder, MotionEncoderConfig, motion_encoder_config)

GRID = (2, 3, 4)  # small token grid: N = 24
N = 24


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _split(batch: int, n: int, num_visible: int, seed: int = 0):
    """Random disjoint (visible, masked) index rows, each sorted ascending."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])  # (B, N)
    return perm[:, :num_visible].sort(1).values, perm[:, num_visible:].sort(1).values


def _micro(**overrides) -> MotionEncoder:
    torch.manual_seed(0)
    return MotionEncoder(motion_encoder_config("micro", grid=GRID, **overrides)).eval()


@pytest.mark.parametrize("size", sorted(MOTION_ENCODER_SIZES))
def test_encoder_shapes_per_size(size):
    cfg = motion_encoder_config(size, grid=(2, 2, 2))
    # The big sizes on the meta device: shapes without allocating or initialising 86M weights.
    device = torch.device("cpu" if size == "micro" else "meta")
    with device:
        enc = MotionEncoder(cfg).eval()
        tokens = torch.randn(2, 8, 4)
    keep = _split(2, 8, 3)[0].to(device)
    with torch.no_grad():
        assert enc(tokens).shape == (2, 8, cfg.dim)
        assert enc(tokens, keep).shape == (2, 3, cfg.dim)
        assert enc.pooled(tokens).shape == (2, 2, cfg.dim)
    assert isinstance(enc.blocks, torch.nn.ModuleList) and len(enc.blocks) == cfg.depth


@pytest.mark.parametrize("size,expected", [("micro", (64, 2, 2)), ("tiny", (192, 12, 3)),
                                           ("small", (384, 12, 6)), ("base", (768, 12, 12))])
def test_named_sizes(size, expected):
    cfg = motion_encoder_config(size)
    assert (cfg.dim, cfg.depth, cfg.heads) == expected
    assert cfg.grid == (8, 14, 14) and cfg.in_dim == 4 and cfg.num_tokens == 1568
    assert motion_encoder_config() == MotionEncoderConfig()  # the default is the published 'small'


def test_small_block_parameters_match_vit_s():
    with torch.device("meta"):
        enc = MotionEncoder(motion_encoder_config("small"))
    num_block_params = sum(p.numel() for p in enc.blocks.parameters())
    assert num_block_params == pytest.approx(21.3e6, rel=0.01)  # ViT-S/16: 21.3M in its blocks


@pytest.mark.parametrize("pos,tables", [("joint", {"pos_embed": (24, 64)}),
                                        ("factorised", {"pos_embed_temporal": (2, 64),
                                                        "pos_embed_spatial": (12, 64)}),
                                        ("sincos", {})])
def test_position_embedding_shapes(pos, tables):
    enc = _micro(pos=pos)
    shapes = {n: tuple(p.shape) for n, p in enc.named_parameters() if n.startswith("pos_embed")}
    assert shapes == tables
    assert enc.position_embedding().shape == (N, 64)


def test_factorised_position_is_sum_in_time_major_order():
    enc = _micro(pos="factorised")
    pos = enc.position_embedding()  # (N, C)
    t, y, x = 1, 2, 3
    n = (t * 3 + y) * 4 + x
    expected = enc.pos_embed_temporal[t] + enc.pos_embed_spatial[y * 4 + x]
    torch.testing.assert_close(pos[n], expected)


def test_sincos_position_is_fixed_and_tells_every_token_apart():
    enc = _micro(pos="sincos")
    pos = enc.position_embedding()  # (N, C)
    assert not pos.requires_grad and "pos_fixed" not in enc.state_dict()  # rebuilt from the config
    assert torch.cdist(pos, pos).add(torch.eye(N) * 1e3).min() > 0.1  # no two tokens share one
    # t, y and x each own a part of the width: tokens one step apart in x differ only in x's part
    t, y, x = 1, 2, 3
    n = (t * 3 + y) * 4 + x
    changed = (pos[n] - pos[n - 1]).abs() > 1e-6
    part = (64 // 3) // 2 * 2
    assert not changed[: 2 * part].any() and changed[2 * part:].any()


def test_keep_all_equals_no_index():
    enc = _micro()
    tokens = torch.randn(2, N, 4)
    all_index = torch.arange(N).expand(2, N)
    with torch.no_grad():
        torch.testing.assert_close(enc(tokens, all_index), enc(tokens))


def test_keep_index_matches_manual_gather():
    """Embedding all tokens + positions, then gathering, then blocks == forward(keep_index)."""
    enc = _micro(pos="factorised")
    tokens = torch.randn(3, N, 4)
    keep, _ = _split(3, N, 7)
    with torch.no_grad():
        full = enc.embed(tokens) + enc.position_embedding()  # (B, N, C)
        x = torch.stack([full[b, keep[b]] for b in range(3)])  # (B, N_vis, C)
        for block in enc.blocks:
            x = block(x)
        torch.testing.assert_close(enc(tokens, keep), enc.norm(x))


def test_dropped_positions_do_not_reach_the_encoder():
    enc = _micro()
    tokens = torch.randn(2, N, 4)
    keep, masked = _split(2, N, 6)
    changed = tokens.clone()
    changed.scatter_(1, masked.unsqueeze(-1).expand(-1, -1, 4), 100.0)
    with torch.no_grad():
        torch.testing.assert_close(enc(changed, keep), enc(tokens, keep))
        assert not torch.allclose(enc(changed), enc(tokens))


def test_pooled_is_spatial_mean_per_time_index():
    enc = _micro()
    tokens = torch.randn(2, N, 4)
    with torch.no_grad():
        x = enc(tokens).reshape(2, 2, 12, 64)  # (B, T', h'w', C)
        torch.testing.assert_close(enc.pooled(tokens), x.mean(2))


def test_wrong_token_shape_is_rejected():
    with pytest.raises(ValueError, match=r"expected tokens \(B, 24, 4\)"):
        _micro()(torch.randn(1, 25, 4))


@pytest.mark.parametrize("kwargs,match", [({"dim": 65}, "divisible"), ({"pos": "sine"}, "pos"),
                                          ({"grid": (2, 0, 4)}, "grid")])
def test_encoder_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        motion_encoder_config("micro", **kwargs)
    with pytest.raises(ValueError, match="unknown motion encoder size"):
        motion_encoder_config("huge")


def _model(predict: str = "ids", num_codes: int = 16) -> MaskedMotionModel:
    torch.manual_seed(0)
    return MaskedMotionModel(motion_encoder_config("micro", grid=GRID),
                             MotionDecoderConfig(dim=32, depth=2, heads=2, num_codes=num_codes,
                                                 predict=predict))


def test_decoder_returns_one_row_per_masked_token():
    model = _model().eval()
    tokens = torch.randn(3, N, 4)
    visible, masked = _split(3, N, 6)
    with torch.no_grad():
        logits = model(tokens, visible, masked)
        assert logits.shape == (3, 18, 16)
        # Row j belongs to token masked_index[:, j]: reordering the masked indices reorders rows.
        torch.testing.assert_close(model(tokens, visible, masked.flip(1)), logits.flip(1))


def test_decoder_does_not_see_masked_token_values():
    model = _model().eval()
    tokens = torch.randn(2, N, 4)
    visible, masked = _split(2, N, 6)
    leaked = tokens.clone()
    leaked.scatter_(1, masked.unsqueeze(-1).expand(-1, -1, 4), -50.0)
    with torch.no_grad():
        torch.testing.assert_close(model(leaked, visible, masked), model(tokens, visible, masked))


def test_partial_coverage_and_vector_head():
    """Visible + masked need not cover N (tokens without motion may be left out)."""
    model = _model(predict="vectors").eval()
    tokens = torch.randn(2, N, 4)
    perm = torch.stack([torch.randperm(N) for _ in range(2)])
    visible, masked = perm[:, :5].sort(1).values, perm[:, 5:15].sort(1).values
    with torch.no_grad():
        assert model(tokens, visible, masked).shape == (2, 10, 4)
        assert model(tokens, visible, masked[:, :0]).shape == (2, 0, 4)


def test_decoder_standalone_parameters():
    dec = MaskedMotionDecoder(MotionDecoderConfig(), encoder_dim=384, num_tokens=1568)
    assert dec.pos_embed.shape == (1568, 192) and dec.mask_token.shape == (1, 1, 192)
    assert len(dec.blocks) == 4 and dec.head.out_features == 1024
    with pytest.raises(ValueError, match="predict"):
        MotionDecoderConfig(predict="pixels")


def test_micro_model_overfits_position_codes():
    """The code of a token is a function of its position: the model must learn to read the
    decoder positions of masked tokens. Loss must halve within 100 steps."""
    model = _model(num_codes=8).train()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(8, N, 4, generator=g)
    codes = (torch.arange(N) * 5 % 8).expand(8, N)  # (B, N) code id by position
    visible, masked = _split(8, N, 6, seed=2)
    target = torch.gather(codes, 1, masked)  # (B, N_mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(100):
        logits = model(tokens, visible, masked)  # (B, N_mask, K)
        loss = F.cross_entropy(logits.reshape(-1, 8), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
