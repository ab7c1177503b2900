"""Readout runs (`model.transformer.run_from(..., readout=positions)`): logits at a few positions,
with the last block computing only those positions, must equal the full forward pass's
logits there, for every architecture, start layer and the edits such runs allow."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.model.sites import SITES, available_sites
from mechjax.model.transformer import run, run_from

READOUTS = [(9,), (0, 9, 4)]  # one position; several, unordered, including the first


@functools.partial(jax.jit, static_argnums=(2, 3))
def _full(params, tokens, cfg, capture, edits):
    return run(params, tokens, cfg, capture=capture, edits=edits)


@functools.partial(jax.jit, static_argnums=(2, 3, 5))
def _from(params, resid, cfg, first_layer, edits, readout):
    return run_from(params, resid, cfg, layer=first_layer, edits=edits, readout=readout)[0]


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_readout_equals_full_logits_at_those_positions(name):
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg, seed=3)
    tokens = np.asarray(random_tokens(cfg, batch=2, n_pos=10, seed=1), np.int32)
    capture = ("resid_pre",) if cfg.n_layers else ()
    logits, acts = run(params, tokens, cfg, capture=capture + ("final_resid",))
    for first_layer in sorted({0, max(cfg.n_layers - 1, 0), cfg.n_layers}):
        resid = (
            acts["resid_pre"][first_layer] if first_layer < cfg.n_layers else acts["final_resid"]
        )
        for readout in READOUTS:
            got = _from(params, resid, cfg, first_layer, (), readout)
            assert got.shape == (2, len(readout), cfg.d_vocab)
            np.testing.assert_allclose(got, logits[:, list(readout)], rtol=2e-5, atol=2e-5)


def test_readout_runs_capture_whole_per_layer_sites():
    """Capturing in a readout run (what a sweep's clean and corrupted runs do) keeps every
    block whole: the captures equal a full run's, the logits are those at the readout."""
    cfg = SMALL_CONFIGS["gemma2_gqa"]
    params = random_model(cfg, seed=5)
    tokens = np.asarray(random_tokens(cfg, batch=2, n_pos=10, seed=3), np.int32)
    capture = ("z", "resid_post", "mlp_out", "final_resid", "ln_final_scale")
    logits, acts = _full(params, tokens, cfg, capture, ())
    got_logits, got = run(params, tokens, cfg, capture=capture, readout=(9, 4))
    np.testing.assert_allclose(got_logits, logits[:, [9, 4]], rtol=2e-5, atol=2e-5)
    for name in capture:
        assert got[name].shape == acts[name].shape
        np.testing.assert_allclose(got[name], acts[name], rtol=1e-5, atol=1e-5, err_msg=name)


@functools.partial(jax.jit, static_argnums=(2, 3, 5))
def _from_prefix(params, resid, cfg, first_layer, edits, readout, prefix):
    return run_from(
        params, resid, cfg, layer=first_layer, edits=edits, readout=readout, prefix=prefix
    )[0]


@pytest.mark.parametrize("name", sorted(n for n, c in SMALL_CONFIGS.items() if c.n_layers))
def test_runs_from_a_key_value_prefix_equal_full_runs(name):
    """Positions `start ..` from the unedited run's keys and values before `start`, with
    edits at later positions (a residual shift and an ablated attention row in the last
    layer), equal the full edited run there: every architecture (RoPE offsets, windows,
    GQA, soft-caps), from the first and the last block, with and without a readout."""
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg, seed=6)
    tokens = np.asarray(random_tokens(cfg, batch=2, n_pos=10, seed=4), np.int32)
    last = cfg.n_layers - 1
    edits = (
        mj.edits.steer("resid_pre", _steer_vector("resid_pre", cfg, 1), layer=last, pos=7),
        mj.edits.zero_ablate("pattern", layer=last, pos=8),
    )
    edited = _full(params, tokens, cfg, (), edits)[0]
    acts = _full(params, tokens, cfg, ("resid_pre", "k", "v"), ())[1]
    assert np.abs(edited - _full(params, tokens, cfg, (), ())[0]).max() > 1e-3
    for first_layer in sorted({0, last}):
        for start in (1, 6):
            resid = acts["resid_pre"][first_layer][:, start:]
            prefix = (acts["k"][:, :, :start], acts["v"][:, :, :start])
            got = _from_prefix(params, resid, cfg, first_layer, edits, None, prefix)
            np.testing.assert_allclose(got, edited[:, start:], rtol=2e-5, atol=2e-5)
            got = _from_prefix(params, resid, cfg, first_layer, edits, (9, 7), prefix)
            np.testing.assert_allclose(got, edited[:, [9, 7]], rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="precede"):  # a readout before the computed part
        run_from(params, resid, cfg, layer=last, readout=(0,), prefix=prefix)


def _steer_vector(site: str, cfg, seed: int) -> np.ndarray:
    """A random shift of one position of `site` (broadcast over the other axes)."""
    last_axis = SITES[site][1][-1]
    width = {
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "one": 1,
        "key_pos": 10,
    }[last_axis]
    return np.random.default_rng(seed).standard_normal(width).astype(np.float32)


@pytest.mark.parametrize("name", ["gemma2_gqa"])  # every site: MLP, post-norms, GQA, windows
def test_readout_runs_apply_edits_at_every_site(name):
    """Edits at every site of the last block (whether computed at every position or at
    the readout positions only), at an earlier block and at the final residual act as
    in a full run: shifts at single positions and a patch over all positions."""
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg, seed=4)
    tokens = np.asarray(random_tokens(cfg, batch=2, n_pos=10, seed=2), np.int32)
    other = np.asarray(random_tokens(cfg, batch=2, n_pos=10, seed=9), np.int32)
    last = cfg.n_layers - 1
    sites = [s for s in available_sites(cfg) if s not in ("embed", "pos_embed")]
    _, source = _full(params, other, cfg, tuple(sites), ())
    embed = _full(params, tokens, cfg, ("resid_pre",), ())[1]["resid_pre"][0]
    earlier = (mj.edits.zero_ablate("resid_mid", layer=0, pos=2),)
    plain = _from(params, embed, cfg, 0, earlier, (9, 5))
    for seed, site in enumerate(sites):
        layer = {"layer": last} if SITES[site][0] else {}
        vector = _steer_vector(site, cfg, seed)
        # a patch over every position, then a shift at two positions
        edits = (
            mj.edits.patch(site, source[site], **layer),
            mj.edits.steer(site, vector, pos=np.array([4, 9]), **layer),
            *earlier,
        )
        full, _ = _full(params, tokens, cfg, (), edits)
        got = _from(params, embed, cfg, 0, edits, (9, 5))
        np.testing.assert_allclose(got, full[:, [9, 5]], rtol=2e-5, atol=2e-5, err_msg=site)
        # the edits matter: without them the logits differ
        assert np.abs(np.asarray(plain) - np.asarray(got)).max() > 1e-4, site


@pytest.mark.parametrize(
    "name, site, over, pos",
    [
        ("gemma2_gqa", "resid_pre", ("layer", "pos"), -1),
        ("gemma2_gqa", "z", ("layer", "head"), 5),
        ("gemma2_gqa", "attn_out", ("pos",), -1),
        ("attn2_ln_bias", "k", ("layer", "pos"), 5),
        ("attn2_ln_bias", "embed", ("pos",), -1),
    ],
)
def test_sweeps_with_a_readout_metric_equal_full_logit_sweeps(name, site, over, pos):
    """A built-in metric lets sweeps compute only its position's logits; a plain callable
    (the same function, opaque to the sweep) gets full logits. Same grid."""
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg, seed=6)
    clean = random_tokens(cfg, batch=3, n_pos=8, seed=7)
    corrupted = random_tokens(cfg, batch=3, n_pos=8, seed=8)
    answer, wrong = np.array([1, 2, 3]), np.array([4, 5, 6])
    metric = mj.patching.metrics.logit_diff(answer, wrong, pos=pos)
    assert mj.patching.metrics.readout(metric, 8)[0] == (pos % 8,)

    def opaque(logits):
        return metric(logits)

    fast = mj.patching.activation_patching(params, cfg, clean, corrupted, site, over, metric=metric)
    full = mj.patching.activation_patching(params, cfg, clean, corrupted, site, over, metric=opaque)
    np.testing.assert_allclose(fast.raw, full.raw, rtol=1e-5, atol=1e-5)
    assert np.ptp(np.asarray(full.raw)) > 1e-3  # the grid is not flat


def test_readout_rejects_a_position_outside_the_inputs():
    metric = mj.patching.metrics.logit_diff(1, 2, pos=8)
    with pytest.raises(ValueError, match="outside the 8 positions"):
        mj.patching.metrics.readout(metric, 8)
