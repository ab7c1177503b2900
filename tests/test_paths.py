"""Path decomposition of 1-/2-layer attention-only models (mechjax.circuits.paths).

References: the model's own logits (the terms must sum to them exactly, norms included),
and a float64 numpy forward pass written here from the definitions, whose patterns and
frozen norm scales give every term by its formula (Elhage et al. 2021)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import random_model, random_tokens

import mechjax as mj
from mechjax.circuits.paths import k_composition_qk_circuit, path_decomposition


def _cfg(n_layers=2, **kw):
    base = dict(d_model=16, n_heads=3, d_vocab=19, n_ctx=12)
    base.update(kw)
    return mj.presets.attn_only(n_layers, **base)


CONFIGS = {
    "nonorm_bias": _cfg(normalization="none", use_bias=True),
    "layernorm_bias": _cfg(use_bias=True),
    "layernorm_1layer": _cfg(1),
    "rmsnorm_nopos": _cfg(normalization="rmsnorm", positional="none", use_bias=True),
    # Gemma-flavoured attention-only: RMSNorm (1 + w), RoPE, GQA, scaled tied embeddings,
    # q/k norms and attention soft-capping (patterns come from the run, so all allowed)
    "gemma_like": mj.ModelConfig(
        d_vocab=19, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=6, n_ctx=12,
        normalization="rmsnorm", norm_eps=1e-6, norm_weight_offset=1.0, positional="rope",
        scale_embeddings=True, tied_embeddings=True, qk_norm=True, attn_logit_softcap=3.0,
        query_pre_attn_scalar=5.0,
    ),
}  # fmt: skip


# -- a float64 numpy reference ------------------------------------------------------------------


def _np_params(params):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)


class NumpyRun:
    """Forward pass of a learned/no-position attention-only model in float64, keeping the
    attention patterns and norm scales, and each path term from its formula."""

    def __init__(self, params, tokens, cfg):
        self.p, self.cfg = _np_params(params), cfg
        p, b = self.p, self.p["blocks"]
        self.has_norm = cfg.normalization != "none"
        self.x = p["W_E"][tokens] * cfg.embed_scale
        if cfg.positional == "learned":
            self.x = self.x + p["W_pos"][: tokens.shape[1]]
        G = cfg.group_size
        self.W_OV = [
            np.einsum("hde,hef->hdf", np.repeat(b["W_V"][l], G, 0), b["W_O"][l])
            for l in range(cfg.n_layers)
        ]
        r = self.x
        self.A, self.s = [], []
        for l in range(cfg.n_layers):
            s = self._scale(r)
            self.s.append(s)
            h = self.L(l, r) + (b["ln1_b"][l] if "ln1_b" in b else 0.0)
            q = np.einsum("bpd,hde->bhpe", h, b["W_Q"][l])
            k = np.einsum("bpd,hde->bhpe", h, np.repeat(b["W_K"][l], G, 0))
            v = np.einsum("bpd,hde->bhpe", h, np.repeat(b["W_V"][l], G, 0))
            if cfg.use_attn_bias:
                q = q + b["b_Q"][l][:, None]
                k = k + np.repeat(b["b_K"][l], G, 0)[:, None]
                v = v + np.repeat(b["b_V"][l], G, 0)[:, None]
            scores = np.einsum("bhqe,bhke->bhqk", q, k) * cfg.attn_scale
            n = scores.shape[-1]
            scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
            A = np.exp(scores - scores.max(-1, keepdims=True))
            A = A / A.sum(-1, keepdims=True)
            self.A.append(A)
            out = np.einsum("bhqk,bhke,hed->bqd", A, v, b["W_O"][l])
            r = r + out + (b["b_O"][l] if cfg.use_attn_bias else 0.0)
        self.final_resid = r
        self.s_final = self._scale(r) if self.has_norm else None
        self.W_U = p["W_U"] if "W_U" in p else p["W_E"].T
        bias = p.get("ln_final_b", np.zeros(cfg.d_model)) @ self.W_U
        self.final_bias = bias + (p["b_U"] if cfg.use_unembed_bias else 0.0)
        self.logits = self.Lf(r) @ self.W_U + self.final_bias

    def _scale(self, r):
        if self.cfg.normalization == "layernorm":
            r = r - r.mean(-1, keepdims=True)
        return 1.0 / np.sqrt((r * r).mean(-1, keepdims=True) + self.cfg.norm_eps)

    def _lin(self, r, s, w):
        if self.cfg.normalization == "layernorm":
            r = r - r.mean(-1, keepdims=True)
        return r * s * (self.cfg.norm_weight_offset + w)

    def L(self, l, r):  # pre-attention norm, frozen scale, no bias
        return self._lin(r, self.s[l], self.p["blocks"]["ln1_w"][l]) if self.has_norm else r

    def Lf(self, r):
        return self._lin(r, self.s_final, self.p["ln_final_w"]) if self.has_norm else r

    def head(self, l, h, r):  # A^h L(r) W_OV^h
        return np.einsum("bqk,bkd->bqd", self.A[l][:, h], self.L(l, r) @ self.W_OV[l][h])

    def const(self, l):
        b, G = self.p["blocks"], self.cfg.group_size
        beta = b["ln1_b"][l] if "ln1_b" in b else np.zeros(self.cfg.d_model)
        total = np.zeros(self.cfg.d_model)
        for h in range(self.cfg.n_heads):
            value = beta @ b["W_V"][l][h // G]
            if self.cfg.use_attn_bias:
                value = value + b["b_V"][l][h // G]
            total = total + value @ b["W_O"][l][h]
        return total + (b["b_O"][l] if self.cfg.use_attn_bias else 0.0)

    def terms(self) -> dict[str, np.ndarray]:
        cfg, out = self.cfg, {}
        logits = lambda w: self.Lf(w) @ self.W_U  # noqa: E731
        out["direct"] = logits(self.x)
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                out[f"L{l}H{h}"] = logits(self.head(l, h, self.x))
        if cfg.n_layers == 2:
            for a in range(cfg.n_heads):
                w0 = self.head(0, a, self.x)
                for b in range(cfg.n_heads):
                    out[f"L0H{a}>L1H{b}"] = logits(self.head(1, b, w0))
        c0 = np.broadcast_to(self.const(0), self.x.shape)
        via = sum(self.head(1, b, c0) for b in range(cfg.n_heads)) if cfg.n_layers == 2 else 0
        out["L0 bias"] = logits(c0 + via)
        if cfg.n_layers == 2:
            out["L1 bias"] = logits(np.broadcast_to(self.const(1), self.x.shape))
        out["final bias"] = np.broadcast_to(self.final_bias, out["direct"].shape)
        return out


@functools.cache
def _case(name: str):
    """(params, tokens, full terms) of one config: every test uses tokens [2, 8] so the
    compiled forward pass and decomposition are shared between tests."""
    cfg = CONFIGS[name]
    params = random_model(cfg, seed=1, noise=0.3)
    tokens = random_tokens(cfg, batch=2, n_pos=8, seed=2)
    return params, tokens, path_decomposition(params, cfg, tokens)


def _close(ours, ref, rtol=2e-4):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    return np.abs(ours - ref).max()


# -- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_terms_sum_to_the_logits(name):
    cfg = CONFIGS[name]
    params, tokens, terms = _case(name)
    L, H = cfg.n_layers, cfg.n_heads
    assert len(terms.labels) == 1 + L * H + (H * H if L == 2 else 0) + L + 1
    assert terms.values.shape == (len(terms.labels), 2, 8, cfg.d_vocab)
    logits = np.asarray(mj.forward(params, tokens, cfg))
    _close(terms.total(), logits, rtol=1e-5)
    assert set(terms.by_kind()) == {"direct", "head", "bias"} | ({"virtual"} if L == 2 else set())
    _close(sum(terms.by_kind().values()), logits, rtol=1e-5)


@pytest.mark.parametrize("name", ["nonorm_bias", "layernorm_bias", "layernorm_1layer"])
def test_every_term_matches_float64_formula(name):
    cfg = CONFIGS[name]
    params, tokens, terms = _case(name)
    ref = NumpyRun(params, tokens, cfg)
    _close(ref.logits, np.asarray(mj.forward(params, tokens, cfg)), rtol=1e-5)  # the reference
    expected = ref.terms()
    assert list(terms.labels) == list(expected)
    for label in terms.labels:
        _close(terms[label], expected[label])


def test_virtual_head_is_pattern_product_times_ov_product():
    """Without norms, the L0Ha>L1Hb term is `(A^b A^a) x W_OV^a W_OV^b W_U` literally."""
    cfg = CONFIGS["nonorm_bias"]
    params, tokens, terms = _case("nonorm_bias")
    ref = NumpyRun(params, tokens, cfg)
    for a, b in [(0, 0), (1, 2), (2, 1)]:
        pattern = np.einsum("bqk,bkj->bqj", ref.A[1][:, b], ref.A[0][:, a])
        expected = pattern @ ref.x @ ref.W_OV[0][a] @ ref.W_OV[1][b] @ ref.W_U
        _close(terms[f"L0H{a}>L1H{b}"], expected)


def test_split_positional_parts_add_up():
    cfg = CONFIGS["layernorm_bias"]
    params, tokens, merged = _case("layernorm_bias")
    split = path_decomposition(params, cfg, tokens, split_positional=True)
    for label, kind in zip(merged.labels, merged.kinds):
        if kind == "bias":
            _close(split[label], merged[label], rtol=1e-5)
        else:
            _close(split[f"{label}:embed"] + split[f"{label}:pos_embed"], merged[label], rtol=1e-5)


def test_logit_direction_modes_match_full_logits():
    cfg = CONFIGS["gemma_like"]
    params, tokens, full = _case("gemma_like")
    full = np.asarray(full.values)
    ids = np.roll(tokens, -1, axis=1)
    other = (ids + 5) % cfg.d_vocab
    pick = lambda v, i: np.take_along_axis(v, i[None, :, :, None], -1)[..., 0]  # noqa: E731
    one = path_decomposition(params, cfg, tokens, token_ids=ids)
    _close(one.values, pick(full, ids), rtol=1e-5)
    diff = path_decomposition(params, cfg, tokens, token_ids=ids, minus_ids=other)
    _close(diff.values, pick(full, ids) - pick(full, other), rtol=1e-5)
    centered = path_decomposition(params, cfg, tokens, token_ids=3, minus_ids="mean")
    _close(centered.values, full[..., 3] - full.mean(-1), rtol=1e-5)


@pytest.mark.parametrize("name", ["nonorm_bias", "gemma_like"])
def test_k_composition_qk_circuit_matches_dense_product(name):
    cfg = CONFIGS[name]
    params, _, _ = _case(name)
    p = _np_params(params)
    W_E = p["W_E"] * cfg.embed_scale
    b, G = p["blocks"], cfg.group_size
    fm = k_composition_qk_circuit(params, cfg, fold=False)
    assert fm.shape == (cfg.n_heads, cfg.n_heads, cfg.d_vocab, cfg.d_vocab)
    dense = np.asarray(fm.AB, np.float64)
    for h1 in range(cfg.n_heads):
        for h2 in range(cfg.n_heads):
            W_OV = b["W_V"][0, h1 // G] @ b["W_O"][0, h1]
            expected = W_E @ b["W_Q"][1, h2] @ (W_E @ W_OV @ b["W_K"][1, h2 // G]).T
            _close(dense[h1, h2], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 layers"):
        k_composition_qk_circuit(params, CONFIGS["layernorm_1layer"])


# -- errors ---------------------------------------------------------------------------------


def test_refuses_models_it_cannot_expand():
    mlp = mj.ModelConfig(d_vocab=11, d_model=8, n_layers=2, n_heads=2, d_head=4, n_ctx=8, d_mlp=8)
    tokens = np.zeros((1, 4), int)
    with pytest.raises(ValueError, match="attention-only"):
        path_decomposition(random_model(mlp), mlp, tokens)
    three = _cfg(3)
    with pytest.raises(ValueError, match="1- and 2-layer"):
        path_decomposition(random_model(three), three, tokens)
    post = CONFIGS["gemma_like"].replace(post_attn_norm=True)
    with pytest.raises(ValueError, match="post-attention"):
        path_decomposition(random_model(post), post, tokens)
    rope = CONFIGS["gemma_like"]
    with pytest.raises(ValueError, match="learned positional"):
        path_decomposition(random_model(rope), rope, tokens, split_positional=True)


def test_bad_token_ids_are_refused():
    cfg = CONFIGS["layernorm_1layer"]
    params, tokens, _ = _case("layernorm_1layer")
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        path_decomposition(params, cfg, tokens, token_ids=np.zeros((2, 4), int))
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, 19\)"):
        path_decomposition(params, cfg, tokens, token_ids=cfg.d_vocab)
    with pytest.raises(ValueError, match="needs token_ids"):
        path_decomposition(params, cfg, tokens, minus_ids=1)
    with pytest.raises(ValueError, match="'mean'"):
        path_decomposition(params, cfg, tokens, token_ids=1, minus_ids="median")
