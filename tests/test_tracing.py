"""Causal tracing (ROME): heat maps against runs built by hand with `mj.edits`, and the
identities the definition implies (restoring the last residual restores everything;
positions before the subject are never corrupted; zero noise corrupts nothing)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import random_model, random_tokens

import mechjax as mj
from mechjax.causal.tracing import causal_trace, embedding_std, window_layers

CFG = mj.ModelConfig(d_vocab=37, d_model=24, n_layers=3, n_heads=4, d_head=6, n_ctx=16, d_mlp=32,
                     use_attn_bias=True, use_mlp_bias=True)  # fmt: skip
SUBJECT = [1, 2]
N_POS = 5


def _prob(logits, answer):
    last = np.asarray(logits, np.float64)[:, -1]
    probs = np.exp(last - last.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return float(np.mean(probs[np.arange(len(last)), answer]))


def test_window_layers_follow_the_centred_clipped_definition():
    # l - w//2 <= l' < l - w//2 + w, clipped to 0..n_layers-1 (ROME uses w = 10)
    assert set(window_layers(0, 3, 5).tolist()) == {0, 1}
    assert set(window_layers(4, 3, 5).tolist()) == {3, 4}
    assert set(window_layers(2, 4, 5).tolist()) == {0, 1, 2, 3}
    assert set(window_layers(3, 10, 5).tolist()) == {0, 1, 2, 3, 4}
    assert set(window_layers(3, 1, 5).tolist()) == {3}


def test_maps_match_runs_built_by_hand():
    params = random_model(CFG)
    tokens = random_tokens(CFG, 2, N_POS, seed=3)
    n_samples, window = 2, 2
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 3 * embedding_std(params, CFG), (n_samples, 2, N_POS, CFG.d_model))
    answer = np.array([4, 9])
    result = causal_trace(params, CFG, tokens, SUBJECT, noise=noise, answer=answer, window=window)
    assert result.hidden.shape == result.mlp.shape == result.attn.shape == (3, N_POS)

    # by hand: noise on the subject's token embeddings, samples stacked on the batch
    masked = noise * np.isin(np.arange(N_POS), SUBJECT)[None, None, :, None]
    noisy = np.tile(tokens, (n_samples, 1))
    corrupt = mj.edits.steer("embed", masked.reshape(-1, N_POS, CFG.d_model))
    answers = np.tile(answer, n_samples)
    clean_logits, stream = mj.run_with_stream(
        params, tokens, CFG, capture=["resid_post", "mlp_out", "attn_out"]
    )
    assert result.clean_prob == pytest.approx(_prob(clean_logits, answer), abs=1e-6)
    corrupted = _prob(mj.forward(params, noisy, CFG, edits=[corrupt]), answers)
    assert result.corrupted_prob == pytest.approx(corrupted, abs=1e-6)
    assert abs(result.clean_prob - result.corrupted_prob) > 1e-3

    for kind, site in (("hidden", "resid_post"), ("mlp", "mlp_out"), ("attn", "attn_out")):
        tiled = np.tile(np.asarray(stream[site]), (1, n_samples, 1, 1))
        for layer in range(CFG.n_layers):
            lo, hi = max(0, layer - window // 2), min(CFG.n_layers, layer - window // 2 + window)
            layers = [layer] if kind == "hidden" else list(range(lo, hi))
            layers = (layers * window)[:window]  # a fixed length: one compile per site
            for pos in range(N_POS):
                restore = mj.edits.patch(site, tiled, layer=layers, pos=pos)
                logits = mj.forward(params, noisy, CFG, edits=[corrupt, restore])
                expected = _prob(logits, answers)
                got = float(getattr(result, kind)[layer, pos])
                assert got == pytest.approx(expected, abs=1e-6), (kind, layer, pos)


def test_identities_of_the_definition():
    params = random_model(CFG)
    tokens = random_tokens(CFG, 1, N_POS, seed=4)
    result = causal_trace(params, CFG, tokens, SUBJECT, key=jax.random.key(1), n_samples=3,
                          kinds=("hidden",))  # fmt: skip
    # the default answer is the clean top token, and the default noise 3x the embeddings' std
    clean_logits = np.asarray(mj.forward(params, tokens, CFG))
    assert int(result.answer[0]) == int(clean_logits[0, -1].argmax())
    assert result.noise_std == pytest.approx(3 * np.std(np.asarray(params["W_E"], np.float64)),
                                             rel=1e-5)  # fmt: skip
    assert result.mlp is None and result.attn is None
    # restoring the final residual at the last position restores the clean prediction
    assert float(result.hidden[-1, -1]) == pytest.approx(result.clean_prob, abs=1e-6)
    # positions before the subject never see the noise (causal attention)
    np.testing.assert_allclose(result.hidden[:, 0], result.corrupted_prob, atol=1e-6)
    # with no noise nothing is corrupted
    calm = causal_trace(params, CFG, tokens, SUBJECT, key=jax.random.key(1), n_samples=3,
                        noise_std=0.0, kinds=("hidden",))  # fmt: skip
    np.testing.assert_allclose(calm.hidden, calm.clean_prob, atol=1e-6)
    assert calm.corrupted_prob == pytest.approx(calm.clean_prob, abs=1e-6)


def test_embedding_std_includes_the_embedding_scale():
    cfg = CFG.replace(scale_embeddings=True)
    params = random_model(CFG)
    assert embedding_std(params, cfg) == pytest.approx(
        np.std(np.asarray(params["W_E"], np.float64)) * np.sqrt(24), rel=1e-5
    )


def test_bad_input():
    params = random_model(CFG)
    tokens = random_tokens(CFG, 1, N_POS)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="subject_pos"):
        causal_trace(params, CFG, tokens, [5], key=key)
    with pytest.raises(ValueError, match="window"):
        causal_trace(params, CFG, tokens, [1], key=key, window=0)
    with pytest.raises(ValueError, match="kinds"):
        causal_trace(params, CFG, tokens, [1], key=key, kinds=("resid",))
    with pytest.raises(ValueError, match="key="):
        causal_trace(params, CFG, tokens, [1])
    with pytest.raises(ValueError, match="noise must be"):
        causal_trace(params, CFG, tokens, [1], noise=np.zeros((2, 1, N_POS, 3)))
    with pytest.raises(ValueError, match="answer"):
        causal_trace(params, CFG, tokens, [1], key=key, answer=[1, 2])
    with pytest.raises(ValueError, match="layer"):
        causal_trace(random_model(SMALL0), SMALL0, tokens, [1], key=key)


SMALL0 = mj.presets.attn_only(0, d_model=24, n_heads=4, d_vocab=37, n_ctx=16)
