"""Head detectors against hand-built patterns with known answers, brute-force loops, and
TransformerLens (`detect_head` and its cached per-head results) on the same weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens, randomize

import mechjax as mj
from mechjax.activations import copying, heads

# -- helpers --------------------------------------------------------------------------------


def stack(pattern_qk: np.ndarray, layers=1, batch=1, n_heads=1) -> np.ndarray:
    """One `[q, k]` pattern tiled to `[layer, batch, head, q, k]`."""
    return np.broadcast_to(pattern_qk, (layers, batch, n_heads) + pattern_qk.shape).copy()


def uniform_pattern(n_pos: int) -> np.ndarray:
    return np.tril(np.ones((n_pos, n_pos))) / np.arange(1, n_pos + 1)[:, None]


def random_pattern(rng, shape) -> np.ndarray:
    """Softmax of random scores under a causal mask: `[..., q, k]` rows summing to 1."""
    n_pos = shape[-1]
    scores = rng.normal(size=shape) * 2
    scores = np.where(np.tril(np.ones((n_pos, n_pos), bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def brute_force(pattern, tokens, seg_len, n_repeats, has_bos):
    """Every pattern score by explicit loops, written from the definitions."""
    L, B, H, P, _ = pattern.shape
    o = int(has_bos)
    out = {k: np.zeros((L, H)) for k in ("induction", "prefix", "previous", "duplicate")}
    for layer in range(L):
        for head in range(H):
            ind, pre, prev, dup = [], [], [], []
            for b in range(B):
                p = pattern[layer, b, head]
                for q in range(P):
                    c, i = divmod(q - o, seg_len)
                    if q >= o and c >= 1:
                        # token after the same token in the previous copy
                        ind.append(p[q, o + (c - 1) * seg_len + i + 1])
                        pre.append(sum(p[q, o + cc * seg_len + i + 1] for cc in range(c)))
                    if q >= 1:
                        prev.append(p[q, q - 1])
                    earlier = [k for k in range(q) if tokens[b, k] == tokens[b, q]]
                    if earlier:
                        dup.append(sum(p[q, k] for k in earlier))
            out["induction"][layer, head] = np.mean(ind)
            out["prefix"][layer, head] = np.mean(pre)
            out["previous"][layer, head] = np.mean(prev)
            out["duplicate"][layer, head] = np.mean(dup) if dup else np.nan
    return out


# -- repeated tokens ------------------------------------------------------------------------------


def test_repeated_tokens_layout_and_exclusions():
    toks = heads.repeated_tokens(3, 5, 7, 12, n_repeats=3, bos_id=0, exclude=(1, 2, 3))
    assert toks.shape == (5, 1 + 3 * 7)
    assert (toks[:, 0] == 0).all()
    seg = toks[:, 1:8]
    np.testing.assert_array_equal(toks[:, 8:15], seg)
    np.testing.assert_array_equal(toks[:, 15:22], seg)
    assert not np.isin(seg, [0, 1, 2, 3]).any()  # BOS and excluded ids never drawn
    np.testing.assert_array_equal(
        toks, heads.repeated_tokens(3, 5, 7, 12, n_repeats=3, bos_id=0, exclude=(1, 2, 3))
    )
    no_bos = heads.repeated_tokens(0, 2, 4, 50)
    assert no_bos.shape == (2, 8)
    np.testing.assert_array_equal(no_bos[:, :4], no_bos[:, 4:])
    # every allowed id is eventually drawn: uniform over the allowed set
    many = heads.repeated_tokens(0, 400, 10, 6, exclude=(5,))
    assert set(np.unique(many)) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seg_len=0), "seg_len"),
        (dict(batch=0), "batch"),
        (dict(bos_id=9), "bos_id"),
        (dict(exclude=range(9)), "excluded"),
    ],
)
def test_repeated_tokens_bad_input(kwargs, match):
    args = dict(seed=0, batch=2, seg_len=3, vocab_size=9) | kwargs
    with pytest.raises(ValueError, match=match):
        heads.repeated_tokens(**args)


# -- hand-built patterns with known answers --------------------------------------------------------


@pytest.mark.parametrize("has_bos", [True, False])
@pytest.mark.parametrize("n_repeats", [2, 3])
def test_exact_induction_pattern_scores_one(has_bos, n_repeats):
    T, o = 5, int(has_bos)
    P = o + n_repeats * T
    p = np.eye(P)  # every query attends to itself ...
    for q in range(o + T, P):  # ... except later copies, which attend to the induction target
        p[q] = 0
        p[q, q - T + 1] = 1
    pattern = stack(p, layers=2, batch=3, n_heads=2)
    np.testing.assert_allclose(heads.induction_scores(pattern, T, has_bos=has_bos), 1.0)
    # a pure induction head attends to only one of the c earlier "next" tokens
    pre = heads.prefix_matching_scores(pattern, T, n_repeats, has_bos=has_bos)
    np.testing.assert_allclose(pre, 1.0)
    prev = heads.previous_token_scores(pattern)
    # its previous-token entries: only q with q - 1 == q - T + 1, i.e. T == 2: none here
    np.testing.assert_allclose(prev, 0.0)


def test_prefix_matching_counts_all_earlier_copies():
    T, n = 4, 4
    P = 1 + n * T
    p = np.zeros((P, P))
    p[:, 0] = 1.0  # rest on BOS ...
    for q in range(1 + T, P):  # ... later copies spread evenly over ALL earlier "next" tokens
        c = (q - 1) // T
        p[q] = 0
        p[q, [q - m * T + 1 for m in range(1, c + 1)]] = 1.0 / c
    pattern = stack(p)
    # a float32 mean of a dozen sums of 1/c: a few ulp off 1.0 (XLA's reduction order differs
    # across processors); counting only the previous copy would give about 0.6
    np.testing.assert_allclose(heads.prefix_matching_scores(pattern, T, n), 1.0, rtol=1e-6)
    # the induction score only sees the previous copy: weight 1/c for a query in copy c
    expected = np.mean([1.0 / ((q - 1) // T) for q in range(1 + T, P)])
    np.testing.assert_allclose(heads.induction_scores(pattern, T), expected, rtol=1e-6)


def test_previous_token_pattern_scores_one():
    P = 9
    p = np.eye(P, k=-1)
    p[0, 0] = 1.0
    pattern = stack(p, layers=1, batch=2, n_heads=3)
    np.testing.assert_allclose(heads.previous_token_scores(pattern), 1.0)


def test_uniform_attention_exact_expectations():
    T, n = 6, 3
    P = 1 + n * T
    tokens = heads.repeated_tokens(0, 1, T, 1000, n_repeats=n, bos_id=0)
    pattern = stack(uniform_pattern(P))
    # uniform attention gives 1/(q+1) to every visible key
    later = range(1 + T, P)
    np.testing.assert_allclose(
        heads.induction_scores(pattern, T), np.mean([1 / (q + 1) for q in later]), rtol=1e-6
    )
    np.testing.assert_allclose(
        heads.prefix_matching_scores(pattern, T, n),
        np.mean([((q - 1) // T) / (q + 1) for q in later]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        heads.previous_token_scores(pattern), np.mean([1 / (q + 1) for q in range(1, P)]), rtol=1e-6
    )
    n_earlier = [(tokens[0, :q] == tokens[0, q]).sum() for q in range(P)]
    expected_dup = np.mean([m / (q + 1) for q, m in enumerate(n_earlier) if m])
    np.testing.assert_allclose(
        heads.duplicate_token_scores(pattern, tokens), expected_dup, rtol=1e-6
    )


def test_duplicate_scores_one_and_nan_without_duplicates():
    tokens = np.array([[3, 1, 3, 2, 1, 3]])
    P = tokens.shape[1]
    p = np.eye(P)
    for q in range(P):
        earlier = [k for k in range(q) if tokens[0, k] == tokens[0, q]]
        if earlier:
            p[q] = 0
            p[q, earlier] = 1 / len(earlier)
    np.testing.assert_allclose(heads.duplicate_token_scores(stack(p), tokens), 1.0, rtol=1e-6)
    distinct = np.arange(P)[None]
    assert np.isnan(heads.duplicate_token_scores(stack(p), distinct)).all()


@pytest.mark.parametrize("has_bos, n_repeats", [(True, 4), (False, 2), (True, 3)])
def test_random_patterns_match_brute_force(has_bos, n_repeats):
    rng = np.random.default_rng(1)
    T = 5
    tokens = heads.repeated_tokens(2, 3, T, 7, n_repeats=n_repeats, bos_id=0 if has_bos else None)
    P = tokens.shape[1]
    pattern = random_pattern(rng, (2, 3, 4, P, P))
    ref = brute_force(pattern, tokens, T, n_repeats, has_bos)
    got = {
        "induction": heads.induction_scores(pattern, T, has_bos=has_bos),
        "prefix": heads.prefix_matching_scores(pattern, T, n_repeats, has_bos=has_bos),
        "previous": heads.previous_token_scores(pattern),
        "duplicate": heads.duplicate_token_scores(pattern, tokens),
    }
    for name, value in got.items():
        np.testing.assert_allclose(value, ref[name], rtol=2e-6, err_msg=name)


def test_pattern_scores_are_jittable():
    rng = np.random.default_rng(0)
    tokens = heads.repeated_tokens(0, 2, 4, 9, n_repeats=3, bos_id=0)
    pattern = jnp.asarray(random_pattern(rng, (1, 2, 2, 13, 13)), jnp.float32)
    f = jax.jit(
        lambda p, t: (
            heads.induction_scores(p, 4),
            heads.prefix_matching_scores(p, 4, 3),
            heads.duplicate_token_scores(p, t),
        )
    )
    for a, b in zip(
        f(pattern, tokens),
        (
            heads.induction_scores(pattern, 4),
            heads.prefix_matching_scores(pattern, 4, 3),
            heads.duplicate_token_scores(pattern, tokens),
        ),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_pattern_shape_errors():
    pattern = np.zeros((1, 1, 1, 11, 11))
    with pytest.raises(ValueError, match="whole copies"):
        heads.induction_scores(pattern, 4)  # 10 positions after BOS, not a multiple of 4
    with pytest.raises(ValueError, match="expected"):
        heads.prefix_matching_scores(pattern, 5, 3)
    with pytest.raises(ValueError, match="at least 2 copies"):
        heads.induction_scores(np.zeros((1, 1, 1, 6, 6)), 5)
    with pytest.raises(ValueError, match="layer, batch, head"):
        heads.previous_token_scores(np.zeros((2, 11, 11)))


# -- copying score on constructed streams ------------------------------------------------------


def _copy_setup(V=7):
    """A model with no final norm and W_O = W_U = I (d_head = d_model = vocab), so a head
    output z = e_t raises the logit of token t by exactly 1."""
    cfg = mj.presets.attn_only(1, d_model=V, n_heads=1, d_head=V, d_vocab=V, normalization="none")
    shapes = mj.param_shapes(cfg)
    params = {k: np.zeros(v) for k, v in shapes.items() if k != "blocks"}
    params["blocks"] = {k: np.zeros(v) for k, v in shapes["blocks"].items()}
    params["W_U"] = np.eye(V)
    params["blocks"]["W_O"] = np.eye(V)[None, None]
    return cfg, params


def _stream(pattern_qk, z_pd):
    return mj.Stream(
        {
            "pattern": jnp.asarray(pattern_qk, jnp.float32)[None, None, None],
            "z": jnp.asarray(z_pd, jnp.float32)[None, None, :, None, :],
        }
    )


@pytest.mark.parametrize("name", ["attn1_nonorm", "attn2_ln_bias", "gemma1_mqa", "gemma2_gqa"])
def test_head_logit_effects_equal_head_writes_through_the_norms(name):
    """The z-route equals each head's captured write pushed through the final norm's
    linear part (frozen scale, no bias) and W_U, in numpy float64: LayerNorm centering,
    RMSNorm offsets, Gemma 2's post-attention norm (whose scale head_writes already holds)."""
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg, seed=1)
    tokens = random_tokens(cfg, batch=2, n_pos=9, seed=2)
    _, stream = mj.run_with_stream(params, tokens, cfg, capture="all")
    writes = np.asarray(stream["head_writes"], np.float64)  # [layer, batch, pos, head, d]
    if cfg.normalization != "none":
        if cfg.normalization == "layernorm":
            writes = writes - writes.mean(-1, keepdims=True)
        w = np.asarray(params["ln_final_w"], np.float64) + cfg.norm_weight_offset
        writes = writes * np.asarray(stream["ln_final_scale"], np.float64)[None, :, :, None] * w
    ref = np.einsum("lbqhd,dv->lhbqv", writes, np.asarray(mj.params.unembedding(params)))
    ours = np.asarray(copying.head_logit_effects(params, cfg, stream))
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(ours, ref, atol=2e-5 * np.abs(ref).max())


def test_copying_score_closed_forms():
    V = 7
    cfg, params = _copy_setup(V)
    copying = jax.jit(heads.copying_scores, static_argnums=1)  # one compile, not one per op
    tokens = np.array([[0, 3, 5, 2, 6]])  # the sample's tokens S = {0, 2, 3, 5, 6}
    P = tokens.shape[1]
    prev = np.eye(P, k=-1)
    prev[0, 0] = 1.0
    attended = tokens[0, np.argmax(prev, axis=1)]
    copy = np.eye(V)[attended]  # the write raises exactly the attended token
    score = copying(params, cfg, _stream(prev, copy), tokens)
    np.testing.assert_allclose(score, [[1.0]], rtol=1e-6)  # all of the raise: f = 1
    score = copying(params, cfg, _stream(prev, -copy), tokens)
    np.testing.assert_allclose(score, [[-1.0]], rtol=1e-6)  # lowered: ReLU gives 0 -> -1
    # raising one *other* token, once inside the sample (f = 0) and once outside it
    # (nothing in S is raised: f = 0 by definition)
    for other_id in (6, 4):
        other = np.eye(V)[np.full(P, other_id)]
        score = copying(params, cfg, _stream(prev, other), tokens)
        np.testing.assert_allclose(score, [[-1.0]], rtol=1e-6)
    # raising the attended token and another by 1 each: both get 1 - 2/V after the mean;
    # f = 1/2 (score 0) where the other is in S, f = 1 (score 1) where it is not
    other_ids = (attended + 1) % V  # queries 1..4: 1, 4, 6, 3
    score = copying(params, cfg, _stream(prev, copy + np.eye(V)[other_ids]), tokens)
    in_sample = np.isin(other_ids[1:], tokens[0])
    np.testing.assert_allclose(score, [[np.mean(np.where(in_sample, 0.0, 1.0))]], atol=1e-6)
    # a zero write scores -1 by definition
    score = copying(params, cfg, _stream(prev, 0 * copy), tokens)
    np.testing.assert_allclose(score, [[-1.0]])


def test_copying_score_of_an_unrelated_head_is_its_chance_level():
    """A head whose logit effect is random, whatever it attends to, gives the attended
    token a 1/n share of the raise among the n distinct tokens of the sequence in
    expectation: score 2/n - 1."""
    V, P, B = 64, 26, 48
    cfg, params = _copy_setup(V)
    rng = np.random.default_rng(0)
    tokens = np.stack([rng.permutation(V)[:P] for _ in range(B)])  # n = P distinct
    prev = np.eye(P, k=-1)
    prev[0, 0] = 1.0
    stream = mj.Stream(
        {
            "pattern": jnp.broadcast_to(jnp.asarray(prev, jnp.float32), (1, B, 1, P, P)),
            "z": jnp.asarray(rng.standard_normal((1, B, P, 1, V)), jnp.float32),
        }
    )
    score = float(heads.copying_scores(params, cfg, stream, tokens)[0, 0])
    chance = 2 / P - 1  # -0.923
    # standard error of the mean of 48 * 25 shares, each about 1/26 +- 1/26
    assert abs(score - chance) < 0.02, (score, chance)


# -- against TransformerLens --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tl_setup():
    pytest.importorskip("transformer_lens")
    from mechjax.io.transformer_lens import to_hooked_transformer

    cfg = mj.presets.attn_only(2, d_model=32, n_heads=4, d_vocab=50, n_ctx=40, use_bias=True)
    params = randomize(mj.init_params(jax.random.key(0), cfg), 1)
    # sharper attention than at init, so the scores are far from chance
    params["blocks"]["W_Q"] = params["blocks"]["W_Q"] * 3.0
    return cfg, params, to_hooked_transformer(params, cfg)


def _tl_detect(model, tokens, name, **kw):
    """TransformerLens's detect_head on token ids (config-built models have no tokenizer:
    `to_tokens` is replaced by the identity on this one instance)."""
    import torch
    from transformer_lens.head_detector import detect_head

    model.to_tokens = lambda seq, *a, **k: seq
    return np.stack(
        [
            detect_head(model, torch.as_tensor(row[None], dtype=torch.long), name, **kw).numpy()
            for row in np.asarray(tokens)
        ]
    )  # [batch, layer, head]


def _no_duplicates_within_segment(seed, batch, T, vocab, **kw):
    rng = np.random.default_rng(seed)
    seg = np.stack([rng.permutation(np.arange(1, vocab))[:T] for _ in range(batch)])
    parts = [np.zeros((batch, 1), int), *[seg] * kw.get("n_repeats", 2)]
    return np.concatenate(parts, axis=1).astype(np.int32)


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current_token", [False, True])
def test_pattern_match_score_equals_transformer_lens(tl_setup, exclude_bos, exclude_current_token):
    cfg, params, model = tl_setup
    tokens = heads.repeated_tokens(5, 3, 6, cfg.d_vocab, n_repeats=4, bos_id=0)
    _, stream = mj.run_with_stream(params, tokens, cfg)  # every TL test uses [3, 25] tokens
    detections = heads.detection_patterns(tokens)
    kw = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token)
    for name in ("previous_token_head", "duplicate_token_head", "induction_head"):
        ours = heads.pattern_match_score(stream["pattern"], detections[name], **kw)
        theirs = _tl_detect(model, tokens, name, **kw).mean(0)
        np.testing.assert_allclose(ours, theirs, atol=2e-6, err_msg=name)


def test_scores_equal_rescaled_transformer_lens(tl_setup):
    """Our means over qualifying queries = TL's `sum(p * det) / n_pos` times
    n_pos / (number of qualifying queries), sequence by sequence."""
    cfg, params, model = tl_setup
    B = 3
    for T, n_repeats in ((12, 2), (6, 4)):
        tokens = _no_duplicates_within_segment(7, B, T, cfg.d_vocab, n_repeats=n_repeats)
        P = tokens.shape[1]
        _, stream = mj.run_with_stream(params, tokens, cfg)
        pattern = stream["pattern"]
        tl_ind = _tl_detect(model, tokens, "induction_head").mean(0)
        # TL's induction detection marks the tokens after ALL earlier copies: our prefix
        # matching score; with 2 copies that is also our induction score
        np.testing.assert_allclose(
            heads.prefix_matching_scores(pattern, T, n_repeats),
            tl_ind * P / ((n_repeats - 1) * T),
            rtol=2e-5,
        )
        if n_repeats == 2:
            np.testing.assert_allclose(
                heads.induction_scores(pattern, T), tl_ind * P / T, rtol=2e-5
            )
        tl_prev = _tl_detect(model, tokens, "previous_token_head").mean(0)
        np.testing.assert_allclose(
            heads.previous_token_scores(pattern), tl_prev * P / (P - 1), rtol=2e-5
        )
    # duplicate tokens, with repeats inside segments too: one sequence at a time
    tokens = heads.repeated_tokens(1, B, 12, 6, n_repeats=2, bos_id=0)
    _, stream = mj.run_with_stream(params, tokens, cfg)
    tl_dup = _tl_detect(model, tokens, "duplicate_token_head")
    for b, row in enumerate(tokens):
        n_dup = sum((row[:q] == row[q]).any() for q in range(len(row)))
        np.testing.assert_allclose(
            heads.duplicate_token_scores(stream["pattern"][:, b : b + 1], row[None]),
            tl_dup[b] * len(row) / n_dup,
            rtol=2e-5,
        )


def test_copying_scores_against_transformer_lens_head_results(tl_setup):
    """The copying formula in numpy float64 on TL's per-head results (through TL's final
    LayerNorm with its cached scale) and TL's patterns."""
    import torch

    cfg, params, model = tl_setup
    tokens = heads.repeated_tokens(3, 3, 6, cfg.d_vocab, n_repeats=4, bos_id=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
        # TL's apply_ln centres and divides by the cached scale; the weight is ours to apply
        results = cache.stack_head_results(apply_ln=True).double().numpy()  # [L*H, b, q, d]
    results = results * model.ln_final.w.detach().double().numpy()
    W_U = model.W_U.detach().double().numpy()
    L, H = cfg.n_layers, cfg.n_heads
    logits = (results @ W_U).reshape(L, H, *tokens.shape, cfg.d_vocab)
    patterns = np.stack([cache["pattern", l].double().numpy() for l in range(L)])  # [l,b,h,q,k]
    ref = np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            vals = []
            for b in range(tokens.shape[0]):
                sample = np.unique(tokens[b])  # the distinct tokens of this sequence
                for q in range(1, tokens.shape[1]):
                    u = np.maximum(logits[l, h, b, q] - logits[l, h, b, q].mean(), 0.0)
                    raised = sum(patterns[l, b, h, q, k] * u[tokens[b, k]] for k in range(q + 1))
                    total = u[sample].sum()  # 0: nothing in the sample raised, f = 0
                    vals.append(2 * raised / total - 1 if total > 0 else -1.0)
            ref[l, h] = np.mean(vals)
    _, stream = mj.run_with_stream(params, tokens, cfg, capture="all")
    ours = heads.copying_scores(params, cfg, stream, tokens)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_detect_heads_one_call_matches_parts(tl_setup):
    cfg, params, _ = tl_setup
    scores = heads.detect_heads(params, cfg, seed=4, batch=3, seg_len=6, n_repeats=4, bos_id=0)
    assert set(scores) == set(heads.SCORE_NAMES)
    tokens = heads.repeated_tokens(4, 3, 6, cfg.d_vocab, n_repeats=4, bos_id=0)
    _, stream = mj.run_with_stream(params, tokens, cfg, capture="all")
    pattern = stream["pattern"]
    parts = {
        "induction": heads.induction_scores(pattern, 6),
        "prefix_matching": heads.prefix_matching_scores(pattern, 6, 4),
        "previous_token": heads.previous_token_scores(pattern),
        "duplicate_token": heads.duplicate_token_scores(pattern, tokens),
        "copying": heads.copying_scores(params, cfg, stream, tokens),
    }
    for name, value in parts.items():
        assert scores[name].shape == (cfg.n_layers, cfg.n_heads)
        np.testing.assert_allclose(scores[name], value, atol=1e-6, err_msg=name)
    # passing the same tokens gives the same scores
    again = heads.detect_heads(params, cfg, tokens, seg_len=6, n_repeats=4, bos_id=0)
    for name in scores:
        np.testing.assert_allclose(again[name], scores[name], atol=1e-7)
    # the jitted core computes any subset of the scores, each as in the full call
    for names in (("prefix_matching",), ("induction", "previous_token", "copying")):
        subset = heads.head_scores(
            params, cfg, jnp.asarray(tokens), seg_len=6, n_repeats=4, has_bos=True, names=names
        )
        assert set(subset) == set(names)
        for name in names:
            np.testing.assert_allclose(subset[name], scores[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["gemma2_gqa", "attn0"])
def test_detect_heads_other_architectures(name):
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg)
    scores = heads.detect_heads(params, cfg, batch=2, seg_len=5, n_repeats=3, bos_id=1)
    for value in scores.values():
        assert value.shape == (cfg.n_layers, cfg.n_heads)
        assert np.isfinite(value).all()
        # copying lies in [-1, 1]; the others are attention mass in [0, 1]
        assert (value >= -1 - 1e-6).all() and (value <= 1 + 1e-6).all()


def test_detect_heads_bad_input(tl_setup):
    cfg, params, _ = tl_setup
    with pytest.raises(ValueError, match="exceed n_ctx"):
        heads.detect_heads(params, cfg, seg_len=20, n_repeats=2, bos_id=0)  # 41 > n_ctx=40
    with pytest.raises(ValueError, match="positions"):
        heads.detect_heads(params, cfg, np.zeros((2, 9), int), seg_len=4, n_repeats=2)


# -- labelling -------------------------------------------------------------------------------------


def test_head_table_labels_and_format():
    scores = {
        "induction": np.array([[0.1, 0.9], [0.5, 0.0]]),
        "previous_token": np.array([[0.95, 0.0], [0.2, np.nan]]),
    }
    rows = heads.head_table(scores)
    assert [(r["layer"], r["head"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["labels"] for r in rows] == [["previous_token"], ["induction"], ["induction"], []]
    rows = heads.head_table(scores, thresholds={"induction": 0.6})
    assert rows[2]["labels"] == []
    text = heads.format_head_table(rows)
    assert "L0H1" in text and "0.900" in text and "induction" in text
    assert heads.format_head_table(rows, only_labelled=True).count("\nL") == 2
    with pytest.raises(ValueError, match="unknown scores"):
        heads.head_table(scores, thresholds={"copying_typo": 0.1})
