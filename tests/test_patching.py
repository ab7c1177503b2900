"""Activation patching, path patching and attribution patching.

References: single edits run one by one through `mj.forward` (the sweep must equal
them); TransformerLens 3.9's `get_act_patch_resid_pre` / `get_act_patch_attn_head_out_
all_pos` on the converted model; an independent numpy float64 forward pass for path
patching; closed-form linearity for attribution patching.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.causal import (
    activation_patching,
    attribution_patching,
    compare_with_exact,
    logit_diff,
    path_patching,
    sweep,
)

ATTN2 = SMALL_CONFIGS["attn2_ln_bias"]
MLP2 = SMALL_CONFIGS["mlp_gelu"]
# attention-only, LayerNorm, biases, grouped-query attention: the numpy reference's model
GQA3 = mj.presets.attn_only(3, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, use_bias=True,
                            n_kv_heads=2)  # fmt: skip
ANSWERS = (3, 5)


def _pair(cfg, batch=2, n_pos=5):
    return random_tokens(cfg, batch, n_pos, seed=1), random_tokens(cfg, batch, n_pos, seed=2)


def _np_logit_diff(logits, answers=ANSWERS):
    last = np.asarray(logits, np.float64)[:, -1]
    return float(np.mean(last[:, answers[0]] - last[:, answers[1]]))


# -- activation patching ----------------------------------------------------------------------


def test_patching_a_run_with_its_own_values_changes_nothing():
    params = random_model(ATTN2)
    clean, _ = _pair(ATTN2)
    with pytest.warns(UserWarning, match="same metric"):
        result = activation_patching(params, ATTN2, clean, clean, "z", ("layer", "head", "pos"),
                                     answers=ANSWERS, chunk_size=5)  # fmt: skip
    assert result.raw.shape == (2, 4, 5)
    np.testing.assert_allclose(result.raw, result.clean_metric, rtol=0, atol=1e-5)
    assert np.isnan(result.normalized).all()


@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_patching_all_positions_of_the_residual_reproduces_the_source_run(mode):
    params = random_model(MLP2)
    clean, corrupted = _pair(MLP2)
    result = activation_patching(params, MLP2, clean, corrupted, "resid_pre", ("layer",),
                                 answers=ANSWERS, mode=mode)  # fmt: skip
    source = result.clean_metric if mode == "denoise" else result.corrupted_metric
    # the metrics of the unpatched runs, independently
    assert result.clean_metric == pytest.approx(
        _np_logit_diff(mj.forward(params, clean, MLP2)), abs=1e-5
    )
    assert result.corrupted_metric == pytest.approx(
        _np_logit_diff(mj.forward(params, corrupted, MLP2)), abs=1e-5
    )
    assert abs(result.clean_metric - result.corrupted_metric) > 0.1  # a real difference
    np.testing.assert_allclose(result.raw, source, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.normalized, 1.0 if mode == "denoise" else 0.0, atol=1e-5)


@pytest.mark.parametrize(
    "name, site, over, mode",
    [
        ("attn2_ln_bias", "z", ("layer", "head", "pos"), "denoise"),
        # head_out / attn_out / z by layer: shifts of the residual after the block
        ("attn2_ln_bias", "head_out", ("head", "layer"), "noise"),
        ("attn1_nonorm", "attn_out", ("layer", "pos"), "denoise"),
        ("gqa3", "z", ("layer", "head"), "noise"),
        ("mlp_gelu", "z", ("layer", "head"), "denoise"),  # an MLP reads it: no shift
        ("attn2_ln_bias", "pattern", ("layer", "pos"), "noise"),
        # runs from a position: RoPE offsets, sliding windows, q/k norms, all layers at once
        ("gemma2_gqa", "resid_pre", ("layer", "pos"), "denoise"),
        ("gemma3", "v", ("pos",), "noise"),
        ("gqa3", "k", ("head", "layer"), "denoise"),
    ],
)
@pytest.mark.parametrize("grouped", [False, True])
def test_sweep_equals_single_edits_run_one_by_one(name, site, over, mode, grouped, monkeypatch):
    if grouped:  # as if the sweep were big: every start group and residual shift it can use
        monkeypatch.setattr(sweep, "ASSUMED_FLOP_PER_S", 1.0)
    cfg = GQA3 if name == "gqa3" else SMALL_CONFIGS[name]
    params = random_model(cfg)
    clean, corrupted = _pair(cfg, n_pos=6)
    chunk_size = 5 if site == "z" else None  # lax.map over vmapped chunks of 5 cells
    result = activation_patching(params, cfg, clean, corrupted, site, over, answers=ANSWERS,
                                 mode=mode, chunk_size=chunk_size)  # fmt: skip
    source_tokens, target = (clean, corrupted) if mode == "denoise" else (corrupted, clean)
    _, stream = mj.run_with_stream(params, source_tokens, cfg, capture=[site])
    sizes = {"layer": cfg.n_layers, "pos": clean.shape[1]}
    sizes["head"] = cfg.n_kv_heads if site in ("k", "v") else cfg.n_heads
    assert result.raw.shape == tuple(sizes[a] for a in over)
    assert result.axes == over
    for index in np.ndindex(result.raw.shape):
        where = dict(zip(over, index))
        edit = mj.edits.patch(site, stream[site], **where)
        expected = _np_logit_diff(mj.forward(params, target, cfg, edits=[edit]))
        assert float(result.raw[index]) == pytest.approx(expected, abs=2e-5), where
    expected_norm = (np.asarray(result.raw) - result.corrupted_metric) / (
        result.clean_metric - result.corrupted_metric
    )
    np.testing.assert_allclose(result.normalized, expected_norm, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "name, site, over, metric, padding",
    [
        ("attn2_ln_bias", "resid_pre", ("layer", "pos"), None, None),  # last token
        ("gemma2_gqa", "resid_pre", ("layer", "pos"), logit_diff(3, 5, pos=2), None),
        ("gqa3", "z", ("layer", "head"), None, "right"),  # each prompt's own last token
        ("mlp_gelu", "mlp_out", ("pos",), logit_diff(3, 5, pos=-2), "left"),
    ],
)
def test_bucketed_sweep_equals_the_unpadded_one(name, site, over, metric, padding):
    cfg = GQA3 if name == "gqa3" else SMALL_CONFIGS[name]
    params = random_model(cfg)
    clean, corrupted = _pair(cfg, n_pos=7)  # padded up to 16 columns (n_ctx)
    mask = None
    if padding:  # a ragged batch: the second prompt is 5 tokens long
        mask = np.ones(clean.shape, bool)
        mask[1, slice(0, 2) if padding == "left" else slice(5, 7)] = False
    answers = None if metric is not None else ANSWERS
    kwargs = dict(metric=metric, answers=answers, mask=mask)
    plain = activation_patching(params, cfg, clean, corrupted, site, over, bucket=False, **kwargs)
    bucketed = activation_patching(params, cfg, clean, corrupted, site, over, **kwargs)
    assert bucketed.raw.shape == plain.raw.shape
    np.testing.assert_allclose(bucketed.raw, plain.raw, rtol=1e-5, atol=2e-5)
    assert bucketed.clean_metric == pytest.approx(plain.clean_metric, abs=2e-5)
    assert bucketed.corrupted_metric == pytest.approx(plain.corrupted_metric, abs=2e-5)
    assert np.ptp(np.asarray(plain.raw)) > 0.01


def test_a_new_length_inside_the_bucket_reuses_the_compiled_sweep():
    compiled = []  # names of the programs XLA compiles (JAX's public monitoring events)

    def listen(event, duration, **info):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(info.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        params = random_model(ATTN2)
        for n_pos in (6, 9, 16):  # all pad up to the bucket 16
            clean, corrupted = _pair(ATTN2, batch=3, n_pos=n_pos)  # a batch no other test uses
            compiled.clear()
            result = activation_patching(params, ATTN2, clean, corrupted, "resid_pre",
                                         ("layer", "pos"), answers=(1, 2))  # fmt: skip
            assert compiled.count("jit(_sweep)") == (n_pos == 6), n_pos  # compiled once
            assert result.raw.shape == (ATTN2.n_layers, n_pos)
        # a plain callable metric reads the logits' columns itself: no padding for it
        clean, corrupted = _pair(ATTN2, batch=3, n_pos=7)
        compiled.clear()
        activation_patching(params, ATTN2, clean, corrupted, "resid_pre", ("layer", "pos"),
                            metric=lambda logits: logits[:, -1, 1].mean())  # fmt: skip
        assert compiled.count("jit(_sweep)") == 1
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_which_sweeps_run_as_residual_shifts():
    """The cases above that should take the shortcut do; the others must not."""
    from mechjax.causal.activation_patching import shifts_residual

    def shifts(site, over, cfg, budget=sweep.MAX_GROUPS):
        return shifts_residual(site, over, cfg, budget)

    assert shifts("head_out", ("head", "layer"), ATTN2)
    assert shifts("attn_out", ("layer", "pos"), SMALL_CONFIGS["attn1_nonorm"])
    assert shifts("z", ("layer", "head"), GQA3)
    assert not shifts("z", ("layer", "head"), GQA3, budget=2)  # one group per layer needed
    assert not shifts("z", ("head",), ATTN2)  # every layer at once
    assert not shifts("z", ("layer", "head"), MLP2)  # the MLP reads the change
    assert not shifts("z", ("layer",), SMALL_CONFIGS["gemma2_gqa"])  # post-norm
    assert not shifts("q", ("layer",), ATTN2)


def test_group_budget_gives_small_sweeps_one_program_and_big_ones_many():
    gpt2 = mj.presets.gpt2()
    assert sweep.group_budget(ATTN2, 2 * 5, (2, 5), logits=False) == 1
    toy = mj.presets.attn_only(2, d_model=64, n_heads=8, d_vocab=258, n_ctx=64)
    assert sweep.group_budget(toy, 2 * 48, (8, 48), logits=False) == 1  # ~0.1 s of work
    assert sweep.group_budget(gpt2, 12 * 64, (8, 64), logits=False) == sweep.MAX_GROUPS
    # the estimate: GPT-2 small's forward is ~2 x 85M multiply-adds per token
    flop = sweep.forward_flop_per_token(gpt2, 1, logits=False)
    assert flop == pytest.approx(2 * 12 * (4 * 768**2 + 2 * 768 * 3072), rel=1e-3)


def test_start_groups_split_layers_and_positions():
    cells = sweep.grid((2, 8), ("layer", "pos"))
    order, groups = sweep.start_groups(cells, "resid_pre", ATTN2, last_start=5)
    # positions start at 0, 2, 4 and 5 (6 is capped at the first position read, 5)
    assert groups == tuple((l, p, 2) for l in (0, 1) for p in (0, 2, 4, 5))
    layers, pos = cells["layer"][order], cells["pos"][order]
    firsts = [(l, p) for l, p, n in groups for _ in range(n)]
    assert all(pos[i] >= p and layers[i] == l for i, (l, p) in enumerate(firsts))
    assert sorted(order.tolist()) == list(range(16))
    # without a readout every cell starts at position 0; model-wide sites at block 0
    assert sweep.start_groups(cells, "resid_pre", ATTN2)[1] == ((0, 0, 8), (1, 0, 8))
    embed_cells = sweep.grid((8,), ("pos",))
    assert sweep.start_groups(embed_cells, "embed", ATTN2, last_start=7)[1] == ((0, 0, 8),)


def test_deep_sweep_with_grouped_start_layers_equals_single_edits(monkeypatch):
    # 10 layers > MAX_LAYER_GROUPS: cells start at shared group starts, in ("pos", "layer")
    # order, so the regrouping and its inverse permutation are both exercised
    monkeypatch.setattr(sweep, "ASSUMED_FLOP_PER_S", 1.0)  # as if it were a big sweep
    cfg = MLP2.replace(n_layers=10)
    params = random_model(cfg)
    clean, corrupted = _pair(cfg, n_pos=3)
    result = activation_patching(params, cfg, clean, corrupted, "mlp_out", ("pos", "layer"),
                                 answers=ANSWERS)  # fmt: skip
    _, stream = mj.run_with_stream(params, clean, cfg, capture=["mlp_out"])
    expected = np.zeros(result.raw.shape)
    for pos, layer in np.ndindex(result.raw.shape):
        edit = mj.edits.patch("mlp_out", stream["mlp_out"], layer=layer, pos=pos)
        expected[pos, layer] = _np_logit_diff(mj.forward(params, corrupted, cfg, edits=[edit]))
    np.testing.assert_allclose(result.raw, expected, rtol=0, atol=2e-5)
    assert np.ptp(expected) > 0.01  # the patches do differ


def test_matches_transformer_lens_patching():
    torch = pytest.importorskip("torch")
    tl_patching = pytest.importorskip("transformer_lens.patching")
    from mechjax.io.transformer_lens import to_hooked_transformer

    for cfg in (MLP2,):
        params = random_model(cfg)
        clean, corrupted = _pair(cfg)
        model = to_hooked_transformer(params, cfg)

        def tl_metric(logits):
            return (logits[:, -1, ANSWERS[0]] - logits[:, -1, ANSWERS[1]]).mean()

        with torch.no_grad():
            _, clean_cache = model.run_with_cache(torch.tensor(clean))
            tl_resid = tl_patching.get_act_patch_resid_pre(
                model, torch.tensor(corrupted), clean_cache, tl_metric
            ).numpy()
            tl_heads = tl_patching.get_act_patch_attn_head_out_all_pos(
                model, torch.tensor(corrupted), clean_cache, tl_metric
            ).numpy()
        ours = activation_patching(params, cfg, clean, corrupted, "resid_pre", ("layer", "pos"),
                                   metric=logit_diff(*ANSWERS))  # fmt: skip
        np.testing.assert_allclose(ours.raw, tl_resid, rtol=1e-5, atol=2e-5)
        heads = activation_patching(params, cfg, clean, corrupted, "z", ("layer", "head"),
                                    metric=logit_diff(*ANSWERS))  # fmt: skip
        np.testing.assert_allclose(heads.raw, tl_heads, rtol=1e-5, atol=2e-5)
        assert np.ptp(tl_resid) > 0.1  # the comparison is not between constants


# -- path patching: numpy float64 reference --------------------------------------------------


def _layernorm(x, w, b, eps):
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w + b


def _np_forward(p, cfg, tokens, override=None):
    """Attention-only LayerNorm model, float64. override: {(layer, kind): {head: value
    [batch, pos, d_head]}} replaces q (per head) or k / v (per kv-head) of a head."""
    override = override or {}
    blocks = p["blocks"]
    n = tokens.shape[1]
    x = p["W_E"][tokens] + p["W_pos"][:n]
    resid_pre, head_out = [], []
    for l in range(cfg.n_layers):
        resid_pre.append(x)
        h = _layernorm(x, blocks["ln1_w"][l], blocks["ln1_b"][l], cfg.norm_eps)
        acts = {
            kind: np.einsum("bpd,hde->bphe", h, blocks[f"W_{kind.upper()}"][l])
            + blocks[f"b_{kind.upper()}"][l]
            for kind in ("q", "k", "v")
        }
        for (layer, kind), heads in override.items():
            if layer == l:
                for head, value in heads.items():
                    acts[kind][:, :, head] = value
        k = np.repeat(acts["k"], cfg.group_size, axis=2)  # query head h uses kv h // G
        v = np.repeat(acts["v"], cfg.group_size, axis=2)
        scores = np.einsum("bqhe,bkhe->bhqk", acts["q"], k) / np.sqrt(cfg.d_head)
        scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        pattern /= pattern.sum(-1, keepdims=True)
        z = np.einsum("bhqk,bkhe->bqhe", pattern, v)
        out = np.einsum("bqhe,hed->bqhd", z, blocks["W_O"][l])
        head_out.append(out)
        x = x + out.sum(2) + blocks["b_O"][l]
    return dict(resid_pre=resid_pre, head_out=head_out, final=x)


def _np_head(p, cfg, resid):
    return _layernorm(resid, p["ln_final_w"], p["ln_final_b"], cfg.norm_eps) @ p["W_U"] + p["b_U"]


def _np_path_patching(p, cfg, clean, corrupted, receivers):
    c, x = _np_forward(p, cfg, clean), _np_forward(p, cfg, corrupted)
    out = np.zeros((cfg.n_layers, cfg.n_heads))
    for ls in range(cfg.n_layers):
        for hs in range(cfg.n_heads):
            delta = x["head_out"][ls][:, :, hs] - c["head_out"][ls][:, :, hs]
            if receivers == "logits":
                out[ls, hs] = _np_logit_diff(_np_head(p, cfg, c["final"] + delta))
                continue
            override = {}
            for lr, hr, kind in receivers:
                if lr <= ls:
                    continue  # no path from a sender at or after the receiver's layer
                blocks = p["blocks"]
                h = _layernorm(c["resid_pre"][lr] + delta, blocks["ln1_w"][lr],
                               blocks["ln1_b"][lr], cfg.norm_eps)  # fmt: skip
                w, b = blocks[f"W_{kind.upper()}"][lr][hr], blocks[f"b_{kind.upper()}"][lr][hr]
                override.setdefault((lr, kind), {})[hr] = h @ w + b
            logits = _np_head(p, cfg, _np_forward(p, cfg, clean, override)["final"])
            out[ls, hs] = _np_logit_diff(logits)
    return out


@pytest.mark.parametrize(
    "receivers",
    ["logits", [(2, 1, "q"), (1, 0, "v"), (2, 1, "k"), (2, 3, "q")]],
    ids=["logits", "qkv-gqa"],
)
def test_path_patching_matches_numpy_reference(receivers):
    cfg = GQA3
    params = random_model(cfg)
    clean, corrupted = _pair(cfg)
    result = path_patching(params, cfg, clean, corrupted, receivers, answers=ANSWERS)
    p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    expected = _np_path_patching(p64, cfg, clean, corrupted, receivers)
    assert result.raw.shape == (3, 4)
    np.testing.assert_allclose(result.raw, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(expected) > 1e-2  # senders differ: the comparison has content
    if receivers != "logits":  # layer-2 senders reach no receiver
        np.testing.assert_allclose(result.raw[2], result.clean_metric, atol=1e-5)


def test_path_patching_sender_and_receiver_positions():
    params = random_model(ATTN2)
    clean, corrupted = _pair(ATTN2)
    # a sender corrupted only at position 4 changes the residual only there, so the
    # receivers' queries at position 0 keep their clean values: the run stays clean
    result = path_patching(params, ATTN2, clean, corrupted, [(1, 2, "q")], answers=ANSWERS,
                           sender_pos=[4], receiver_pos=[0])  # fmt: skip
    np.testing.assert_allclose(result.raw, result.clean_metric, atol=1e-5)


# -- attribution patching ---------------------------------------------------------------------

LINEAR = mj.presets.attn_only(2, d_model=24, n_heads=4, d_vocab=37, n_ctx=16,
                              normalization="none", use_bias=True)  # fmt: skip


@pytest.mark.parametrize("mode", ["noise", "denoise"])
def test_attribution_patching_is_exact_where_the_metric_is_linear(mode):
    # No final norm, no soft-cap, logit-difference metric: the metric is linear in the
    # final residual, and the last layer's head outputs, z and v reach it linearly.
    params = random_model(LINEAR)
    clean, corrupted = _pair(LINEAR)
    exact_final = compare_with_exact(params, LINEAR, clean, corrupted, "final_resid", ("pos",),
                                     answers=ANSWERS, mode=mode)  # fmt: skip
    assert exact_final.max_abs_error < 1e-4
    assert np.ptp(exact_final.exact.raw) > 0.1
    sites = {"v": ("pos", "layer")}  # value vectors of the last layer act linearly
    estimates = attribution_patching(params, LINEAR, clean, corrupted, sites, answers=ANSWERS,
                                     mode=mode)  # fmt: skip
    for site, over in sites.items():
        exact = activation_patching(params, LINEAR, clean, corrupted, site, over,
                                    answers=ANSWERS, mode=mode)  # fmt: skip
        last = over.index("layer")
        est = np.take(np.asarray(estimates[site].raw), -1, axis=last)
        np.testing.assert_allclose(est, np.take(np.asarray(exact.raw), -1, axis=last),
                                   rtol=1e-4, atol=1e-4, err_msg=site)  # fmt: skip
        assert estimates[site].clean_metric == pytest.approx(exact.clean_metric, abs=1e-5)


def test_attribution_patching_default_sites_and_correlation():
    from mechjax.causal.attribution_patching import check_sites

    assert check_sites(None, MLP2, 5) == (
        ("resid_pre", ("layer", "pos")),
        ("attn_out", ("layer", "pos")),
        ("head_out", ("layer", "head")),
        ("mlp_out", ("layer", "pos")),
    )
    params = random_model(MLP2)
    clean, corrupted = _pair(MLP2)
    comparison = compare_with_exact(params, MLP2, clean, corrupted, "mlp_out", answers=ANSWERS)
    a, b = np.ravel(comparison.estimate.raw), np.ravel(comparison.exact.raw)
    assert comparison.correlation == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-6)


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_raises_before_compiling():
    params = random_model(ATTN2)
    clean, corrupted = _pair(ATTN2)
    call = dict(answers=ANSWERS)
    with pytest.raises(ValueError, match="same shape"):
        activation_patching(params, ATTN2, clean, corrupted[:, :4], "resid_pre", **call)
    with pytest.raises(ValueError, match="unknown site"):
        activation_patching(params, ATTN2, clean, corrupted, "resid", **call)
    with pytest.raises(ValueError, match="no site 'mlp_out'"):
        activation_patching(params, ATTN2, clean, corrupted, "mlp_out", **call)
    with pytest.raises(ValueError, match="no \\['head'\\] axis"):
        activation_patching(params, ATTN2, clean, corrupted, "resid_pre", ("layer", "head"),
                            **call)  # fmt: skip
    with pytest.raises(ValueError, match="distinct axis names"):
        activation_patching(params, ATTN2, clean, corrupted, "z", ("layer", "layer"), **call)
    with pytest.raises(ValueError, match="mode="):
        activation_patching(params, ATTN2, clean, corrupted, "z", mode="both", **call)
    with pytest.raises(ValueError, match="answers="):
        activation_patching(params, ATTN2, clean, corrupted, "z")
    with pytest.raises(ValueError, match="outside"):
        activation_patching(params, ATTN2, clean, corrupted, "z", answers=(3, 99))
    with pytest.raises(ValueError, match="scalar"):
        activation_patching(params, ATTN2, clean, corrupted, "z", metric=lambda lg: lg[:, -1, 0])
    with pytest.raises(ValueError, match="token ids must lie"):
        activation_patching(params, ATTN2, clean + 100, corrupted, "z", **call)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        path_patching(params, ATTN2, clean, corrupted, [(2, 0, "q")], **call)
    with pytest.raises(ValueError, match="key/value head"):
        path_patching(random_model(GQA3), GQA3, clean, corrupted, [(1, 2, "k")], **call)
    with pytest.raises(ValueError, match="kind"):
        path_patching(params, ATTN2, clean, corrupted, [(1, 0, "o")], **call)
    with pytest.raises(ValueError, match="receiver_pos"):
        path_patching(params, ATTN2, clean, corrupted, "logits", receiver_pos=[5], **call)
    with pytest.raises(ValueError, match="no site"):
        attribution_patching(params, ATTN2, clean, corrupted, ["mlp_out"], **call)


def test_chunk_size_auto_and_bad_values():
    from mechjax.causal import sweep

    assert sweep.check_chunk_size("auto", 512) == sweep.AUTO_CHUNK_TOKENS // 512
    assert sweep.check_chunk_size("auto", 10**6) == 1  # never zero cells per chunk
    assert sweep.check_chunk_size(None, 512) is None and sweep.check_chunk_size(3, 512) == 3
    for bad in (0, -1, 2.5, True, "big"):
        with pytest.raises(ValueError, match="chunk_size"):
            sweep.check_chunk_size(bad, 512)
