"""The motion codebook: k-means on synthetic token clouds, determinism, save/load, the CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from mvmae.train.codebook import CODEBOOK_VERSION, Codebook, CodebookConfig, fit_codebook, mean_vector
from mvmae.train.tokenizer import TokenSpec

# Cluster centres of dim 4 = one 2x1 tubelet [dx(f0), dy(f0), dx(f1), dy(f1)], normalised units:
# mean vectors of length >= 1.5 (far above the static threshold 0.125), >= 2 apart from each other.
CENTRES = np.array([[2, 0, 2, 0], [-2, 0, -2, 0], [0, 2, 0, 2], [0, -2, 0, -2],
                    [3, 3, 1, 1], [-3, -3, -1, -1], [1, -3, 3, -1], [-1, 3, -3, 1]], np.float32)
NOISE = 0.05


def token_cloud(per_cluster: int = 400, num_static: int = 800, seed: int = 0,
                centres: np.ndarray = CENTRES) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (N, 4): ``per_cluster`` around each centre, then ``num_static`` near zero (mean
    vector length < 0.05); and the cluster of each token (-1 = static)."""
    rng = np.random.default_rng(seed)
    moving = centres.repeat(per_cluster, 0) + rng.normal(0, NOISE, (len(centres) * per_cluster, 4))
    static = rng.uniform(-0.03, 0.03, (num_static, 4))
    labels = np.concatenate([np.arange(len(centres)).repeat(per_cluster), np.full(num_static, -1)])
    return np.concatenate([moving, static]).astype(np.float32), labels


def perplexity(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def test_clusters_are_recovered():
    tokens, labels = token_cloud()
    book = fit_codebook(tokens, CodebookConfig(size=len(CENTRES) + 1, seed=0))
    ids = book.assign(torch.from_numpy(tokens)).numpy()
    assert (ids[labels == -1] == 0).all()
    cluster_ids = [np.unique(ids[labels == c]) for c in range(len(CENTRES))]
    assert all(len(u) == 1 for u in cluster_ids), cluster_ids  # one code per cluster ...
    assert sorted(int(u[0]) for u in cluster_ids) == list(range(1, len(CENTRES) + 1))  # ... all distinct
    for c, u in enumerate(cluster_ids):
        np.testing.assert_allclose(book.centroids[u[0]], CENTRES[c], atol=4 * NOISE / math.sqrt(400) + 1e-2)
    s = book.stats
    expected = perplexity(np.array([800] + [400] * len(CENTRES)))  # static share 0.2, 0.1 each
    assert s["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert s["moving_perplexity"] == pytest.approx(len(CENTRES), rel=1e-4)  # the moving codes used evenly
    assert s["dead_codes"] == 0 and s["num_tokens"] == len(tokens)
    assert s["static_ratio"] == pytest.approx(0.2)
    # Moving tokens sit ~NOISE * sqrt(4) from their centre, static ones ~0.02 from zero.
    assert s["quantization_error"] < 2.5 * NOISE * 2


@pytest.mark.parametrize("size", [3, 5, 9])
def test_no_dead_codes_when_codes_do_not_outnumber_clusters(size):
    tokens, _ = token_cloud(per_cluster=200, num_static=100)
    book = fit_codebook(tokens, CodebookConfig(size=size, seed=1))
    assert book.stats["dead_codes"] == 0
    ids = book.assign(torch.from_numpy(tokens))
    assert set(ids.tolist()) == set(range(size))


def test_extra_codes_stay_unused_with_few_distinct_tokens():
    # 3 distinct moving tokens (repeated) for 7 moving codes: 3 learnt, 4 dead, never assigned.
    tokens = np.concatenate([np.tile(CENTRES[:3], (50, 1)), np.zeros((10, 4), np.float32)])
    book = fit_codebook(tokens, CodebookConfig(size=8, seed=0))
    assert book.stats["dead_codes"] == 4
    ids = book.assign(torch.from_numpy(tokens))
    assert ids.max() <= 3 and set(ids[:3].tolist()) == {1, 2, 3}


def test_static_code_zero_for_near_zero_tokens():
    tokens, labels = token_cloud(per_cluster=100, num_static=300)
    config = CodebookConfig(size=9, static_threshold=0.125)
    book = fit_codebook(tokens, config)
    np.testing.assert_array_equal(book.centroids[0], np.zeros(4, np.float32))
    # Near the threshold: mean vector length just below -> 0, just above -> a moving code.
    below = np.array([[0.12, 0.0, 0.12, 0.0]], np.float32)
    above = np.array([[0.13, 0.0, 0.13, 0.0]], np.float32)
    assert book.assign(torch.from_numpy(below)).item() == 0
    assert book.assign(torch.from_numpy(above)).item() > 0
    ids = book.assign(torch.from_numpy(tokens)).numpy()
    assert (ids[labels == -1] == 0).all() and (ids[labels >= 0] > 0).all()
    assert book.stats["static_ratio"] == pytest.approx(300 / len(tokens))


def test_all_static_sample_keeps_only_the_static_code(caplog):
    tokens = np.random.default_rng(0).uniform(-0.01, 0.01, (200, 4)).astype(np.float32)
    with caplog.at_level("WARNING", logger="mvmae.train.codebook"):
        book = fit_codebook(tokens, CodebookConfig(size=4))
    assert "no moving tokens" in caplog.text
    assert (book.assign(torch.from_numpy(tokens)) == 0).all()
    assert book.stats["static_ratio"] == 1.0 and book.stats["dead_codes"] == 3


def test_vector_mode_learns_two_d_centroids():
    # The two frames of a token disagree, but their mean vector is what 'vector' mode clusters.
    means = np.array([[2, 0], [-2, 0], [0, 2], [0, -2]], np.float32)
    centres = np.concatenate([means + [0.5, -0.5], means - [0.5, -0.5]], axis=1)  # (4, 4)
    tokens, labels = token_cloud(per_cluster=300, num_static=200, centres=centres)
    book = fit_codebook(tokens, CodebookConfig(size=5, token="vector", seed=0))
    assert book.centroids.shape == (5, 2) and book.token_dim == 4
    ids = book.assign(torch.from_numpy(tokens)).numpy()
    for c in range(4):
        (code,) = np.unique(ids[labels == c])
        np.testing.assert_allclose(book.centroids[code], means[c], atol=0.02)
    assert (ids[labels == -1] == 0).all()
    np.testing.assert_allclose(mean_vector(centres), means)


def test_fit_is_deterministic_for_a_seed():
    tokens, _ = token_cloud(per_cluster=300, seed=3)
    # Fewer codes than clusters: k-means has real choices to make, so the seed matters.
    a = fit_codebook(tokens, CodebookConfig(size=6, seed=7, max_tokens=2000))
    b = fit_codebook(tokens, CodebookConfig(size=6, seed=7, max_tokens=2000))
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.stats == b.stats


def test_max_tokens_subsamples():
    tokens, _ = token_cloud(per_cluster=300, num_static=600)
    book = fit_codebook(tokens, CodebookConfig(size=9, max_tokens=1000))
    assert book.stats["num_tokens"] == 1000


def test_save_load_round_trip(tmp_path):
    tokens, _ = token_cloud(per_cluster=100, num_static=100)
    book = fit_codebook(tokens, CodebookConfig(size=9, token="tubelet", static_threshold=0.2, seed=2))
    spec = TokenSpec(num_frames=8, mv_size=7, camera="affine")
    book.token_spec = spec.to_dict()
    path = book.save(tmp_path / "sub" / "book.npz")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["book.npz"]  # no temp left
    loaded = Codebook.load(path)
    np.testing.assert_array_equal(loaded.centroids, book.centroids)
    assert loaded.config == book.config and loaded.token_dim == 4
    assert loaded.stats == pytest.approx(book.stats)
    assert TokenSpec(**loaded.token_spec) == spec
    x = torch.from_numpy(tokens)
    assert torch.equal(loaded.assign(x), book.assign(x))


def _rewrite_meta(path, **changes) -> None:
    with np.load(path) as z:
        centroids, meta = z["centroids"], json.loads(str(z["meta"]))
    meta.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, centroids=centroids, meta=np.str_(json.dumps(meta)))


def test_load_refuses_other_versions_naming_the_file(tmp_path):
    tokens, _ = token_cloud(per_cluster=50, num_static=50)
    path = fit_codebook(tokens, CodebookConfig(size=4)).save(tmp_path / "old.npz")
    _rewrite_meta(path, version=CODEBOOK_VERSION + 1)
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        Codebook.load(path)
    assert f"version {CODEBOOK_VERSION + 1}" in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "damaged_zip", "npy", "npz_without_meta"])
def test_load_refuses_what_is_not_a_codebook(tmp_path, kind):
    path = tmp_path / "bad.npz"
    if kind in ("empty", "text", "damaged_zip"):
        path.write_bytes({"empty": b"", "text": b"not a codebook", "damaged_zip": b"PK\x03\x04junk"}[kind])
    elif kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((4, 4), np.float32))
    elif kind == "npz_without_meta":
        with open(path, "wb") as fh:
            np.savez(fh, centroids=np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        Codebook.load(path)
    assert ("not found" if kind == "missing" else "not an mvmae codebook") in str(info.value)


@pytest.mark.parametrize("kwargs", [{"size": 1}, {"token": "pixel"}, {"static_threshold": -1.0},
                                    {"max_tokens": 0}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        CodebookConfig(**kwargs)


@pytest.mark.parametrize("token", ["tubelet", "vector"])
def test_cli_end_to_end(synth_shards, cli_runner, tmp_path, token):
    from mvmae.cli import main

    out = tmp_path / "codebook.npz"
    args = ["codebook", synth_shards["train"], "--size", "16", "--out", str(out), "--token", token,
            "--frames", "16", "--mv-size", "8", "--tubelet", "2x2", "--camera", "median",
            "--clips-per-video", "2", "--batch-size", "4", "--workers", "0", "--seed", "3"]
    result = cli_runner.invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    book = Codebook.load(out)
    # The token spec travels with the codebook (pretraining tokenizes from it).
    spec = TokenSpec(num_frames=16, mv_size=8, tubelet_frames=2, tubelet_cells=2, camera="median")
    assert book.token_spec == spec.to_dict()
    assert book.token_dim == spec.token_dim == 16 and book.size == 16
    assert book.centroids.shape == (16, 2 if token == "vector" else 16)
    assert book.config.token == token and book.config.seed == 3
    # 12 videos x 2 clips x (8 x 4 x 4) tokens, all kept (under --max-tokens).
    s = book.stats
    assert s["num_tokens"] == synth_shards["num_train"] * 2 * spec.grid.num_tokens
    assert 1.0 <= s["perplexity"] <= 16 and 0 <= s["dead_codes"] < 15 and 0 < s["static_ratio"] < 1
    # The printed summary is the stored stats.
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"codebook of 16 codes from {s['num_tokens']} tokens (dim 16)")
    assert f"perplexity {s['perplexity']:.1f} ({s['moving_perplexity']:.1f} over moving tokens)" in line
    assert f"dead codes {s['dead_codes']}" in line
    assert f"static {s['static_ratio']:.1%}" in line
    assert f"quantization error {s['quantization_error']:.3f}" in line and str(out) in line


def test_cli_is_deterministic(synth_shards, cli_runner, tmp_path):
    from mvmae.cli import main

    books = []
    for name in ("a.npz", "b.npz"):
        args = ["codebook", synth_shards["train"], "--size", "12", "--out", str(tmp_path / name),
                "--frames", "16", "--mv-size", "8", "--clips-per-video", "1", "--workers", "0"]
        result = cli_runner.invoke(main, args)
        assert result.exit_code == 0, result.output + result.stderr
        books.append(Codebook.load(tmp_path / name))
    np.testing.assert_array_equal(books[0].centroids, books[1].centroids)


def test_cli_reports_bad_tubelet(synth_shards, cli_runner, tmp_path):
    from mvmae.cli import main

    result = cli_runner.invoke(main, ["codebook", synth_shards["train"], "--out", str(tmp_path / "b.npz"),
                                      "--mv-size", "7", "--tubelet", "2x2", "--workers", "0"])
    assert result.exit_code != 0
    assert "multiples of the tubelet" in result.stderr
    assert not (tmp_path / "b.npz").exists()
