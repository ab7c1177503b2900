"""Skip-trigrams from the QK/OV circuits (mechjax.circuits.skip_trigrams), against dense float64
circuits built here in numpy and against a model with a planted skip-trigram."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import random_model

import mechjax as mj
from mechjax.circuits.factored import FactoredMatrix
from mechjax.circuits.skip_trigrams import format_skip_trigrams, skip_trigrams, top_entries
from mechjax.data import ByteTokenizer


def _np(params):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)


def _dense_circuits(params, cfg):
    """Full OV `[head, src, out]` and QK `[head, dst, src]` in float64, norm weights folded
    as `P diag(offset + w) W`, with `P = I - 11^T / d_model` for LayerNorm's centering."""
    p = _np(params)
    b = p["blocks"]
    d = cfg.d_model
    P = np.eye(d) - np.ones((d, d)) / d if cfg.normalization == "layernorm" else np.eye(d)
    off = cfg.norm_weight_offset  # Gemma's RMSNorm multiplies by (1 + w)
    w1 = np.diag(off + b["ln1_w"][0]) if "ln1_w" in b else np.eye(d)
    wf = np.diag(off + p["ln_final_w"]) if "ln_final_w" in p else np.eye(d)
    W_E = p["W_E"] * cfg.embed_scale
    W_U = p["W_U"] if "W_U" in p else p["W_E"].T
    G = cfg.group_size
    ov, qk = [], []
    for h in range(cfg.n_heads):
        W_V, W_K = b["W_V"][0][h // G], b["W_K"][0][h // G]
        ov.append(W_E @ P @ w1 @ W_V @ b["W_O"][0][h] @ P @ wf @ W_U)
        qk.append(W_E @ (P @ w1 @ b["W_Q"][0][h]) @ (P @ w1 @ W_K).T @ W_E.T)
    return np.stack(ov), np.stack(qk)


CFG_LN = mj.presets.attn_only(1, d_model=16, n_heads=3, d_vocab=37, n_ctx=8)
CFG_GQA = mj.ModelConfig(
    d_vocab=29, d_model=12, n_layers=1, n_heads=4, n_kv_heads=2, d_head=4, n_ctx=8,
    normalization="rmsnorm", norm_weight_offset=1.0, positional="rope", tied_embeddings=True,
    scale_embeddings=True,
)  # fmt: skip


@pytest.mark.parametrize("cfg", [CFG_LN, CFG_GQA], ids=["layernorm", "gqa_rmsnorm"])
def test_table_matches_dense_float64_circuits(cfg):
    params = random_model(cfg, seed=0, noise=0.3)
    ov, qk = _dense_circuits(params, cfg)
    exclude = (0, 5)
    keep = np.ones(cfg.d_vocab, bool)
    keep[list(exclude)] = False
    worst = 0.0
    # per_source=None: the 6 largest entries; per_source=1: the 6 sources with the
    # largest row maxima, each with its best output
    plain = skip_trigrams(params, cfg, n_ov=6, n_dst=3, exclude=exclude, chunk_rows=5,
                          per_source=None)  # fmt: skip
    distinct = skip_trigrams(params, cfg, n_ov=6, n_dst=3, exclude=exclude, chunk_rows=5)
    assert len(plain) == len(distinct) == cfg.n_heads
    for h in range(cfg.n_heads):
        masked = np.where(keep[:, None] & keep[None, :], ov[h], -np.inf)
        order = np.argsort(masked, axis=None)[::-1][:6]
        assert [(t.src, t.out) for t in plain[h]] == [divmod(int(i), cfg.d_vocab) for i in order]
        best_src = np.argsort(masked.max(1))[::-1][:6]
        expected = [(int(s), int(masked[s].argmax())) for s in best_src]
        assert [(t.src, t.out) for t in distinct[h]] == expected
        for t in plain[h] + distinct[h]:
            worst = max(worst, abs(t.ov - ov[h, t.src, t.out]) / np.abs(ov[h]).max())
            column = np.where(keep, qk[h][:, t.src], -np.inf)
            assert list(t.dst) == list(np.argsort(column)[::-1][:3])
            np.testing.assert_allclose(t.qk, column[list(t.dst)], rtol=1e-4, atol=1e-5)
            assert t.src not in exclude and t.out not in exclude and not set(t.dst) & set(exclude)
    assert worst < 1e-5


def test_top_entries_chunking_and_leading_axes():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((2, 3, 23, 4)).astype(np.float32)
    B = rng.standard_normal((1, 3, 4, 17)).astype(np.float32)  # broadcasts over the first axis
    dense = np.einsum("...mr,...rn->...mn", A.astype(np.float64), B.astype(np.float64))
    dense = np.broadcast_to(dense, (2, 3, 23, 17))
    for chunk in (1, 7, 23, None):
        values, rows, cols = top_entries(FactoredMatrix(A, B), 5, chunk_rows=chunk)
        assert values.shape == rows.shape == cols.shape == (2, 3, 5)
        flat = dense.reshape(2, 3, -1)
        expected = np.argsort(flat, axis=-1)[..., ::-1][..., :5]
        np.testing.assert_array_equal(rows * 17 + cols, expected)
        np.testing.assert_allclose(values, np.take_along_axis(flat, expected, -1), rtol=1e-5)
        values, rows, cols = top_entries(FactoredMatrix(A, B), 4, per_row=2, chunk_rows=chunk)
        top2 = np.argsort(dense, axis=-1)[..., ::-1][..., :2]  # [2, 3, 23, 2]
        cand = np.take_along_axis(dense, top2, -1).reshape(2, 3, -1)
        np.testing.assert_allclose(values, -np.sort(-cand, -1)[..., :4], rtol=1e-5)
        assert all(np.bincount(r, minlength=23).max() <= 2 for r in rows.reshape(-1, 4))
        np.testing.assert_allclose(
            values, np.take_along_axis(dense.reshape(2, 3, -1), rows * 17 + cols, -1), rtol=1e-5
        )
    # fewer allowed entries than k: the rest are -inf
    values, rows, cols = top_entries(
        FactoredMatrix(A[0, 0], B[0, 0]), 4, exclude_rows=range(1, 23), exclude_cols=range(2, 17)
    )
    assert np.isfinite(values).sum() == 2 and set(rows[:2]) == {0}


def test_planted_skip_trigram_is_found_and_decoded():
    """One-hot embeddings; head 0 copies byte 'a' into 'b' (OV) and 'c' attends to 'a' (QK)."""
    V = ByteTokenizer.vocab_size
    cfg = mj.presets.attn_only(
        1, d_model=V, n_heads=2, d_head=2, d_vocab=V, n_ctx=8, normalization="none"
    )
    rng = np.random.default_rng(2)
    a, b, c = ord("a"), ord("b"), ord("c")
    W_Q = 0.01 * rng.standard_normal((1, 2, V, 2))
    W_K = 0.01 * rng.standard_normal((1, 2, V, 2))
    W_V = 0.01 * rng.standard_normal((1, 2, V, 2))
    W_O = 0.01 * rng.standard_normal((1, 2, 2, V))
    W_V[0, 0, a, 0], W_O[0, 0, 0, b] = 3.0, 3.0
    W_Q[0, 0, c, 1], W_K[0, 0, a, 1] = 2.0, 2.0
    params = {
        "W_E": np.eye(V),
        "W_pos": np.zeros((8, V)),
        "W_U": np.eye(V),
        "blocks": {"W_Q": W_Q, "W_K": W_K, "W_V": W_V, "W_O": W_O},
    }
    params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, jax.numpy.float32), params)
    table = skip_trigrams(params, cfg, n_ov=2, n_dst=1)
    best = table[0][0]
    assert (best.src, best.dst[0], best.out) == (a, c, b)
    np.testing.assert_allclose([best.ov, best.qk[0]], [9.0, 4.0], rtol=1e-3)
    tok = ByteTokenizer()
    assert best.format(tok.token_str) == "[a] … [c] → [b]"
    assert best.format() == f"[{a}] … [{c}] → [{b}]"
    first_line = format_skip_trigrams(table, tok.token_str).splitlines()[0]
    assert first_line.startswith("L0H0  [a] … [c] → [b]  OV 9")


def test_errors_name_the_problem():
    two = mj.presets.attn_only(2, d_model=8, n_heads=2, d_vocab=11, n_ctx=8)
    with pytest.raises(ValueError, match="1-layer attention-only"):
        skip_trigrams(random_model(two), two)
    params = random_model(CFG_LN)
    with pytest.raises(ValueError, match="n_ov"):
        skip_trigrams(params, CFG_LN, n_ov=0)
    with pytest.raises(ValueError, match="outside"):
        skip_trigrams(params, CFG_LN, exclude=[CFG_LN.d_vocab])
    with pytest.raises(ValueError, match="every token id"):
        skip_trigrams(params, CFG_LN, exclude=range(CFG_LN.d_vocab))
    with pytest.raises(ValueError, match="k must be"):
        top_entries(FactoredMatrix(np.ones((3, 2)), np.ones((2, 3))), 0)
    with pytest.raises(ValueError, match="per_row"):
        skip_trigrams(params, CFG_LN, per_source=0)
