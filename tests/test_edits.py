"""Interventions (`mechjax.model.edits`): each edit against the weight surgery or manual
computation it stands for, their selectors, batching with vmap, and gradients.

Definitions (METHODS.md "Interventions"): zero / mean / resample ablation, activation
patching (replace an activation with another run's), steering (add a vector). Every
edit is `act <- scale * act + value` inside a selection of layer / position / head.
"""

from __future__ import annotations

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, model_configs, random_model, random_tokens
from hypothesis import strategies as st

import mechjax as mj
from mechjax.model import edits as E

B, P = 2, 8


def _close(got, want, rel=1e-5):
    """float32 agreement relative to the larger of 1 and the reference's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= rel * max(1.0, np.abs(want).max()), err


# Gemma 2's switches (local + global layers, caps, post norms, GQA) in 2 layers: each
# forward pass is one XLA compilation, the main cost of this file.
GEMMA2_2L = SMALL_CONFIGS["gemma2_gqa"].replace(n_layers=2, layer_types=("local", "global"))


def _setup(name, seed=0, **changes):
    cfg = (GEMMA2_2L if name == "gemma2_2l" else SMALL_CONFIGS[name]).replace(**changes)
    return cfg, random_model(cfg, seed), random_tokens(cfg, B, P, seed)


# -- identities -------------------------------------------------------------------------------


@pytest.mark.parametrize("config_name", ["mlp_solu", "gemma3"])
def test_identity_edits_at_every_site(config_name):
    """scale 1, steer by 0, and patching a run with its own captured values, at every
    site of the model at once, leave the logits unchanged. (The two configs together have
    every site; `scores` holds -inf at masked keys, which patching must survive.)"""
    cfg, params, tokens = _setup(config_name)
    logits, stream = mj.run_with_stream(params, tokens, cfg, capture="all")
    edits = []
    for site in mj.sites.available_sites(cfg):
        edits += [E.scale(site, 1.0), E.steer(site, 0.0), E.patch(site, stream[site])]
    _close(mj.forward(params, tokens, cfg, edits=edits), logits)


# -- edits as weight surgery ------------------------------------------------------------------


@pytest.mark.parametrize("config_name, site", [("attn2_ln_bias", "z"), ("gemma2_2l", "head_out")])
def test_zero_ablating_a_head_equals_zeroing_its_W_O(config_name, site):
    cfg, params, tokens = _setup(config_name)
    layer, head = 1, 2
    surgery = jax.tree_util.tree_map(lambda x: x, params)
    surgery["blocks"]["W_O"] = params["blocks"]["W_O"].at[layer, head].set(0.0)
    want = mj.forward(surgery, tokens, cfg)
    got = mj.forward(params, tokens, cfg, edits=[E.zero_ablate(site, layer=layer, head=head)])
    _close(got, want)
    assert np.abs(np.asarray(want) - np.asarray(mj.forward(params, tokens, cfg))).max() > 1e-3


@pytest.mark.parametrize(
    "config_name, site, weight", [("gemma1_mqa", "v", "W_V"), ("gemma3", "k", "W_K")]
)
def test_kv_edits_select_kv_heads(config_name, site, weight):
    """At `k`/`v` the head selector picks a key/value head (grouped-query and multi-query
    models): zero-ablating it equals zeroing that head's W_K/W_V slice (with Gemma 3's
    k-norm, a zero key stays zero), and only the query heads of its group change."""
    cfg, params, tokens = _setup(config_name)
    layer, kv = 0, cfg.n_kv_heads - 1
    surgery = jax.tree_util.tree_map(lambda x: x, params)
    surgery["blocks"][weight] = params["blocks"][weight].at[layer, kv].set(0.0)
    want_logits, want = mj.run_with_stream(surgery, tokens, cfg, capture=["pattern", "z"])
    edit = E.zero_ablate(site, layer=layer, head=kv)
    got_logits, got = mj.run_with_stream(params, tokens, cfg, capture=["pattern", "z"], edits=edit)
    _close(got_logits, want_logits)
    _close(got["z"], want["z"])
    _, clean = mj.run_with_stream(params, tokens, cfg, capture=["pattern", "z"])
    group = np.arange(cfg.n_heads) // cfg.group_size == kv  # query heads reading kv head
    # a zero key changes its group's patterns [batch, head, q, k]; a zero value its
    # group's z [batch, pos, head, d_head]; other heads move only by float32 rounding
    name, head_axis = ("pattern", 1) if site == "k" else ("z", 2)
    moved = np.abs(np.asarray(got[name][layer]) - np.asarray(clean[name][layer]))
    moved = moved.max(axis=tuple(i for i in range(moved.ndim) if i != head_axis))
    assert (moved[~group] < 1e-6).all() and (moved[group] > 1e-3).all()


def test_patching_resid_pre_everywhere_reproduces_the_source_run():
    """Patching resid_pre of layer l at every position from another run gives that run's
    logits exactly, for every l (vmapped over the layer selector)."""
    cfg, params, tokens = _setup("gemma2_2l")
    source_tokens = random_tokens(cfg, B, P, seed=9)
    source_logits, source = mj.run_with_stream(params, source_tokens, cfg, capture=["resid_pre"])

    def patched(layer):
        edit = E.patch("resid_pre", source["resid_pre"], layer=layer)
        return mj.forward(params, tokens, cfg, edits=[edit])

    got = jax.vmap(patched)(jnp.arange(cfg.n_layers))
    for layer in range(cfg.n_layers):
        _close(got[layer], source_logits)


def test_steering_equals_shifting_the_embeddings():
    """Adding v to the residual stream before layer 0 is adding v / embed_scale to every
    row of W_E (untied, so W_U is unchanged); steering `embed` at one position equals
    steering `resid_pre` of layer 0 there; coeff multiplies the vector."""
    cfg, params, tokens = _setup("gemma1_mqa", tied_embeddings=False)
    v = np.random.default_rng(1).standard_normal(cfg.d_model).astype(np.float32)
    shifted = dict(params, W_E=params["W_E"] + v / cfg.embed_scale)
    want = mj.forward(shifted, tokens, cfg)
    _close(mj.forward(params, tokens, cfg, edits=[E.steer("resid_pre", v, layer=0)]), want)

    at_pos = mj.forward(params, tokens, cfg, edits=[E.steer("embed", v / 2, pos=3, coeff=2.0)])
    _close(mj.forward(params, tokens, cfg, edits=[E.steer("resid_pre", v, layer=0, pos=3)]), at_pos)
    clean = np.asarray(mj.forward(params, tokens, cfg))
    _close(np.asarray(at_pos)[:, :3], clean[:, :3])  # causal: earlier positions untouched
    assert np.abs(np.asarray(at_pos)[:, 3] - clean[:, 3]).max() > 1e-3


# -- selection semantics -------------------------------------------------------------------------


SELECTIONS = {
    "k": dict(head=1, pos=2),  # kv_head axis
    "scores": dict(head=3, pos=5),  # query_pos axis
    "head_out": dict(head=0, pos=[1, 6]),
    "mlp_post": dict(pos=4),
}


def test_selectors_pick_the_documented_axes():
    """Scaling by 3 at (layer, pos, head) changes the captured site exactly there: `pos`
    is the (query) position axis, `head` the head axis (kv_head at k); layer 0 is
    untouched."""
    cfg, params, tokens = _setup("gemma2_2l")
    layer = 1
    _, clean = mj.run_with_stream(params, tokens, cfg, capture=list(SELECTIONS))
    for site, selectors in SELECTIONS.items():
        edit = E.scale(site, 3.0, layer=layer, **selectors)
        _, edited = mj.run_with_stream(params, tokens, cfg, capture=[site], edits=edit)
        before, after = np.asarray(clean[site][layer]), np.asarray(edited[site][layer])
        axes = mj.sites.SITES[site][1]
        index = [slice(None)] * len(axes)
        for name, value in selectors.items():
            axis = next(i for i, a in enumerate(axes) if a in (name, f"query_{name}", f"kv_{name}"))
            index[axis] = value
        expected = before.copy()
        expected[tuple(index)] *= 3.0
        # (two compiled programs: equal up to float32 rounding, not bitwise)
        np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5, err_msg=site)
        np.testing.assert_allclose(edited[site][0], clean[site][0], rtol=1e-5, atol=1e-5)


def test_zero_ablating_scores_gives_uniform_attention_over_allowed_keys():
    """Scores of 0 everywhere: each query attends uniformly to the keys the causal
    sliding-window mask allows (layer 0 is local, window 4); no NaN."""
    cfg, params, tokens = _setup("gemma2_2l")
    _, stream = mj.run_with_stream(
        params, tokens, cfg, capture=["pattern"], edits=E.zero_ablate("scores", layer=0)
    )
    q, k = np.arange(P)[:, None], np.arange(P)[None, :]
    allowed = (k <= q) & (q - k < cfg.sliding_window)
    uniform = allowed / allowed.sum(-1, keepdims=True)
    want = np.broadcast_to(uniform, (B, cfg.n_heads, P, P))
    np.testing.assert_allclose(stream["pattern"][0], want, rtol=0, atol=1e-6)


# -- ablations: mean and resample ----------------------------------------------------------------


def test_mean_ablation_uses_the_reference_mean():
    """mean_ablate replaces the activation with the reference batch's mean: per position,
    pooled over positions too (`over_positions`, for inputs of another length), and at a
    model-wide site. The expected means are computed in numpy and applied as patches
    (both edit lists have one structure, so they share one compiled pass)."""
    cfg, params, tokens = _setup("mlp_gelu")
    tokens = tokens[:, :6]  # shorter than the reference: only pooled means fit
    ref_tokens = random_tokens(cfg, 5, P, seed=7)
    _, ref = mj.run_with_stream(params, ref_tokens, cfg, capture=["attn_out", "mlp_out", "embed"])
    attn, mlp, emb = (np.asarray(ref[n], np.float64) for n in ("attn_out", "mlp_out", "embed"))

    got = mj.forward(params, tokens, cfg, edits=[
        E.mean_ablate("attn_out", ref["attn_out"][:, :, :6], layer=1),
        E.mean_ablate("mlp_out", ref["mlp_out"], pos=[0, 2], over_positions=True),
        E.mean_ablate("embed", ref["embed"][:, :6]),
    ])  # fmt: skip
    want = mj.forward(params, tokens, cfg, edits=[
        E.patch("attn_out", attn[:, :, :6].mean(axis=1, keepdims=True), layer=1),
        E.patch("mlp_out", mlp.mean(axis=(1, 2), keepdims=True), pos=[0, 2]),
        E.patch("embed", emb[:, :6].mean(axis=0, keepdims=True)),
    ])  # fmt: skip
    _close(got, want)
    assert np.abs(np.asarray(want) - np.asarray(mj.forward(params, tokens, cfg))).max() > 1e-3


def test_resample_gives_each_example_another_examples_activation():
    cfg, params, _ = _setup("mlp_relu")
    tokens = np.arange(5 * P).reshape(5, P) % cfg.d_vocab  # distinct rows
    source_tokens = (tokens + 11) % cfg.d_vocab
    source_logits, source = mj.run_with_stream(
        params, source_tokens, cfg, capture=["embed", "resid_post"]
    )
    for key in range(4):
        edit = E.resample("embed", source["embed"], key=jax.random.key(key))
        _, got = mj.run_with_stream(params, tokens, cfg, capture=["embed"], edits=edit)
        got, src = np.asarray(got["embed"]), np.asarray(source["embed"])
        perm = [next(j for j in range(5) if np.array_equal(got[i], src[j])) for i in range(5)]
        assert sorted(perm) == list(range(5)) and all(perm[i] != i for i in range(5)), perm
    # without a key: a plain patch from the other run (the whole residual after layer 0
    # of a 1-layer model: the other run's logits); per-layer sites shuffle the batch axis
    plain = E.resample("resid_post", source["resid_post"], layer=0)
    _close(mj.forward(params, tokens, cfg, edits=[plain]), source_logits)
    keyed = E.resample("resid_post", source["resid_post"], key=jax.random.key(0))
    value = np.asarray(keyed.value)
    assert value.shape == source["resid_post"].shape
    rows = [next(j for j in range(5) if np.array_equal(value[:, i], source["resid_post"][:, j]))
            for i in range(5)]  # fmt: skip
    assert all(rows[i] != i for i in range(5))


# -- batching and gradients ------------------------------------------------------------------------


@st.composite
def _edit_sweeps(draw):
    cfg = draw(model_configs().filter(lambda c: c.n_layers > 0))
    per_layer = [s for s in mj.sites.available_sites(cfg) if mj.sites.SITES[s][0]]
    site = draw(st.sampled_from(per_layer))
    n = draw(st.integers(2, 3))
    axes = mj.sites.SITES[site][1]
    n_head = cfg.n_kv_heads if "kv_head" in axes else cfg.n_heads if "head" in axes else None
    layers = [draw(st.integers(0, cfg.n_layers - 1)) for _ in range(n)]
    positions = [draw(st.integers(0, 5)) for _ in range(n)]
    heads = [draw(st.integers(0, n_head - 1)) for _ in range(n)] if n_head else None
    return cfg, site, layers, positions, heads, draw(st.integers(0, 2**16))


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(sweep=_edit_sweeps())
def test_vmapped_patches_equal_one_by_one(sweep):
    """One vmapped call over (layer, pos, head) selectors and patch values gives what
    each patch gives on its own. (Random patch values: what is tested is the batching.)"""
    cfg, site, layers, positions, heads, seed = sweep
    # without the final soft-cap the tolerance scales with the logits' real size (a capped
    # logit of 3.0 can hide a pre-cap logit in the hundreds, whose float32 rounding
    # differs between the batched and the single run); the cap is not what is tested here
    cfg = cfg.replace(final_logit_softcap=None)
    params = random_model(cfg, seed)
    tokens = random_tokens(cfg, B, 6, seed)
    n = len(layers)
    sizes = dict(batch=B, pos=6, query_pos=6, key_pos=6, one=1, d_model=cfg.d_model)
    sizes.update(head=cfg.n_heads, kv_head=cfg.n_kv_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp)
    shape = (n, cfg.n_layers, *(sizes[a] for a in mj.sites.SITES[site][1]))
    sources = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    heads_arr = None if heads is None else np.asarray(heads)

    def run(value, layer, pos, head):
        edit = E.patch(site, value, layer=layer, pos=pos, head=head)
        return mj.forward(params, tokens, cfg, edits=[edit])

    batched = jax.vmap(run, in_axes=(0, 0, 0, None if heads is None else 0))(
        sources, np.asarray(layers), np.asarray(positions), heads_arr
    )
    for i in range(n):
        head = None if heads is None else heads[i]
        _close(batched[i], run(sources[i], layers[i], positions[i], head))


def test_vmapped_steering_and_scaling():
    """vmap over steering vectors, steering coefficients and scale factors at once."""
    cfg, params, tokens = _setup("gemma2_2l")
    vecs = np.random.default_rng(3).standard_normal((3, cfg.d_model)).astype(np.float32)
    coeffs = np.array([0.5, -1.0, 2.0], np.float32)
    factors = np.array([0.0, 0.5, 1.5], np.float32)

    def run(v, c, f):
        edits = [E.steer("resid_mid", v, layer=1, coeff=c), E.scale("pattern", f, layer=1, head=3)]
        return mj.forward(params, tokens, cfg, edits=edits)

    batched = jax.vmap(run)(vecs, coeffs, factors)
    for i in range(3):
        _close(batched[i], run(vecs[i], coeffs[i], factors[i]))
    assert np.abs(np.asarray(batched[0] - batched[1])).max() > 1e-3


def test_gradients_through_value_and_scale_match_finite_differences():
    """jax.grad of a scalar of the logits through a steering vector and a scale factor,
    against central differences (float32: step 1e-2, agreement to ~1e-3)."""
    cfg, params, tokens = _setup("gemma2_2l")
    w = np.random.default_rng(5).standard_normal((B, P, cfg.d_vocab)).astype(np.float32)

    def metric(value, factor):
        # (not mlp_post: gemma2's post-MLP RMSNorm would normalise a scale away)
        edits = [E.steer("resid_mid", value, layer=1, pos=4), E.scale("mlp_pre", factor, layer=0)]
        return jnp.mean(mj.forward(params, tokens, cfg, edits=edits) * w)

    value0 = np.zeros(cfg.d_model, np.float32)
    factor0 = np.float32(0.8)
    g_value, g_factor = jax.jit(jax.grad(metric, argnums=(0, 1)))(value0, factor0)
    f = jax.jit(metric)
    h = 1e-2
    fd_factor = (f(value0, factor0 + h) - f(value0, factor0 - h)) / (2 * h)
    u = np.random.default_rng(6).standard_normal(cfg.d_model).astype(np.float32)
    fd_value = (f(value0 + h * u, factor0) - f(value0 - h * u, factor0)) / (2 * h)
    assert abs(float(g_factor)) > 1e-3 and abs(float(g_value @ u)) > 1e-3
    np.testing.assert_allclose(g_factor, fd_factor, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(g_value @ u, fd_value, rtol=2e-3, atol=1e-5)

    # a patch's value only matters where it is selected
    _, stream = mj.run_with_stream(params, tokens, cfg, capture=["z"])

    def patched(value):
        edit = E.patch("z", value, layer=1, pos=3, head=1)
        return jnp.mean(mj.forward(params, tokens, cfg, edits=[edit]) * w)

    g = np.asarray(jax.grad(patched)(stream["z"]))  # [layer, batch, pos, head, d_head]
    mask = np.zeros(g.shape, bool)
    mask[1, :, 3, 1] = True
    assert (g[~mask] == 0).all() and np.abs(g[mask]).max() > 1e-4


# -- the generic edit: act -> scale * fn(act, params) + value ---------------------------------


def _affine(x, p):
    return p["a"] * x + p["b"]


def _project_out(x, u):
    """Remove the component along the unit vector u [d_model] (a rank-one eraser)."""
    return x - (x @ u)[..., None] * u


def test_transform_equals_the_affine_edits_it_generalises():
    cfg, params, tokens = _setup("gemma2_2l")
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(cfg.d_model).astype(np.float32)
    where = dict(layer=1, pos=jnp.array([2, 5]))
    pairs = [
        (E.scale("resid_pre", 0.3, **where), {"a": 0.3, "b": 0.0}),
        (E.steer("resid_post", vector, coeff=2.0, **where), {"a": 1.0, "b": 2.0 * vector}),
        (E.zero_ablate("z", layer=0, head=1), {"a": 0.0, "b": 0.0}),
    ]
    for affine, p in pairs:
        selectors = dict(layer=affine.layer, pos=affine.pos, head=affine.head)
        generic = E.transform(affine.site, _affine, p, **selectors)
        want = mj.forward(params, tokens, cfg, edits=[affine])
        _close(mj.forward(params, tokens, cfg, edits=[generic]), want)
        assert not np.allclose(want, mj.forward(params, tokens, cfg))  # the edit does act


def test_transform_projects_out_a_direction_exactly():
    """Projecting u out of resid_post at every layer: the captured (edited) residual has
    no component along u, checked in float64."""
    cfg, params, tokens = _setup("attn2_ln_bias")
    u = np.random.default_rng(1).standard_normal(cfg.d_model)
    u = (u / np.linalg.norm(u)).astype(np.float32)
    edit = E.transform("resid_post", _project_out, u)
    _, stream = mj.run_with_stream(params, tokens, cfg, capture=["resid_post"], edits=[edit])
    along = np.asarray(stream["resid_post"], np.float64) @ u.astype(np.float64)
    scale = np.abs(np.asarray(stream["resid_post"])).max()
    assert np.abs(along).max() < 1e-5 * scale


def test_a_batch_of_transforms_vmaps_and_passes_gradients():
    cfg, params, tokens = _setup("mlp_gelu")
    rng = np.random.default_rng(2)
    us = rng.standard_normal((3, cfg.d_model)).astype(np.float32)
    us /= np.linalg.norm(us, axis=1, keepdims=True)

    def last_logits(edit):
        return mj.model.transformer.run(params, tokens, cfg, edits=(edit,))[0][:, -1]

    # a batch of edits: the same function, a leading batch axis on its params only
    edits = E.transform("resid_mid", _project_out, jnp.asarray(us), layer=0)
    in_axes = jax.tree_util.tree_map(lambda _: None, edits).replace(params=0)
    batched = jax.vmap(last_logits, in_axes=(in_axes,))(edits)
    for i in range(3):
        one = E.transform("resid_mid", _project_out, us[i], layer=0)
        _close(batched[i], mj.forward(params, tokens, cfg, edits=[one])[:, -1])
    # d/dv of a transform adding v equals d/dvalue of the steer adding it
    v = jnp.asarray(rng.standard_normal(cfg.d_model), jnp.float32)

    def add(x, p):
        return x + p

    def metric(edit):
        return last_logits(edit)[:, 3].sum()

    grad_transform = jax.grad(lambda p: metric(E.transform("mlp_out", add, p, layer=1)))(v)
    grad_steer = jax.grad(lambda p: metric(E.steer("mlp_out", p, layer=1)))(v)
    _close(grad_transform, grad_steer)
    assert np.abs(np.asarray(grad_steer)).max() > 1e-3


def test_transform_params_with_a_layer_axis_and_in_readout_runs():
    cfg, params, tokens = _setup("gemma2_2l")
    us = np.random.default_rng(3).standard_normal((cfg.n_layers, cfg.d_model))
    us = (us / np.linalg.norm(us, axis=1, keepdims=True)).astype(np.float32)
    stacked = E.transform("resid_post", _project_out, us, params_have_layer_axis=True)
    one_by_one = [E.transform("resid_post", _project_out, us[i], layer=i) for i in range(2)]
    full = mj.forward(params, tokens, cfg, edits=[stacked])
    _close(full, mj.forward(params, tokens, cfg, edits=one_by_one))
    # a readout run computes the last block at one position: position-wise fns agree
    read = mj.model.transformer.run(params, tokens, cfg, edits=(stacked,), readout=(P - 1,))[0]
    _close(read[:, 0], full[:, P - 1])


def test_transform_refuses_bad_functions_and_params():
    cfg, params, tokens = _setup("attn1_nonorm")
    with pytest.raises(ValueError, match="returned shape .* must return the activation's shape"):
        mj.forward(params, tokens, cfg, edits=[E.transform("resid_post", lambda x, p: x[..., :2])])
    with pytest.raises(ValueError, match="needs a function"):
        E.transform("resid_post", "not a function")
    bad = E.transform(
        "resid_post", _project_out, np.ones((3, cfg.d_model)), params_have_layer_axis=True
    )
    with pytest.raises(ValueError, match="leading layer axis of 1"):
        mj.forward(params, tokens, cfg, edits=[bad])
