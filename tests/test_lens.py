"""Logit lens and tuned lens.

References: the model's own logits (last lens entry); a numpy float64 output head
applied to the residuals the model itself exposes at `resid_pre` / `resid_post`
(independent of the stream's accumulated sum); numpy top-k; KL before/after training.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.activations.lens import logit_lens, top_tokens
from mechjax.activations.tuned_lens import (
    TunedLens,
    apply_tuned_lens,
    load_tuned_lens,
    save_tuned_lens,
    train_tuned_lens,
    tuned_lens_kl,
)
from mechjax.views.lens import plot_logit_lens

CASES = ["attn0", "attn2_ln_bias", "mlp_gelu", "gemma2_gqa"]


@pytest.mark.parametrize("name", CASES)
def test_last_entry_is_the_model_and_entries_match_numpy(name):
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg)
    tokens = random_tokens(cfg, 2, 6)
    capture = ["resid_pre", "resid_post", "final_resid"] if cfg.n_layers else ["final_resid"]
    logits, stream = mj.run_with_stream(params, tokens, cfg, capture="writes")
    lens = logit_lens(params, cfg, stream)
    assert lens.shape == (cfg.n_layers + 1, 2, 6, cfg.d_vocab)
    np.testing.assert_allclose(lens[-1], logits, rtol=1e-5, atol=1e-5)

    # every entry: the output head, in float64, on the residual the model itself had
    _, sites = mj.run_with_stream(params, tokens, cfg, capture=capture)
    resids = [sites["final_resid"]]
    if cfg.n_layers:
        resids = [sites["resid_pre"][0]] + [sites["resid_post"][i] for i in range(cfg.n_layers)]
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    for entry, resid in enumerate(resids):
        expected = _np_output_head(p, cfg, np.asarray(resid, np.float64))
        np.testing.assert_allclose(lens[entry], expected, rtol=1e-4, atol=1e-4)


def _np_output_head(p, cfg, x):
    if cfg.normalization != "none" and cfg.final_norm:
        if cfg.normalization == "layernorm":
            x = x - x.mean(-1, keepdims=True)
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps)
        x = x * (cfg.norm_weight_offset + p["ln_final_w"]) + p.get("ln_final_b", 0.0)
    logits = x @ (p["W_U"] if "W_U" in p else p["W_E"].T) + p.get("b_U", 0.0)
    if cfg.final_logit_softcap:
        logits = cfg.final_logit_softcap * np.tanh(logits / cfg.final_logit_softcap)
    return logits


def test_top_tokens_and_plot():
    cfg = SMALL_CONFIGS["attn2_ln_bias"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, 2, 6)
    _, stream = mj.run_with_stream(params, tokens, cfg)
    lens = logit_lens(params, cfg, stream)
    ids, probs = top_tokens(lens, 3)
    x = np.asarray(lens, np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    order = np.argsort(-p, axis=-1)[..., :3]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(probs, np.take_along_axis(p, order, -1), rtol=1e-5, atol=1e-7)

    fig = plot_logit_lens(lens, tokens, batch_index=1, decode=lambda i: f"t{i}")
    (ax, *_) = fig.axes
    labels = [t.get_text() for t in ax.texts]
    assert len(labels) == 3 * 6
    assert labels[0] == f"t{int(order[0, 1, 0, 0])}"
    with pytest.raises(ValueError, match="batch_index"):
        plot_logit_lens(lens, tokens, batch_index=2)
    with pytest.raises(ValueError, match="k must"):
        top_tokens(lens, 0)


def test_tuned_lens_identity_last_entry_and_training(tmp_path):
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, 4, 8, seed=5)
    logits, stream = mj.run_with_stream(params, tokens, cfg)
    identity = TunedLens.identity(cfg)
    np.testing.assert_allclose(apply_tuned_lens(params, cfg, identity, stream),
                               logit_lens(params, cfg, stream), rtol=1e-6, atol=1e-6)  # fmt: skip

    rng = np.random.default_rng(0)
    batches = rng.integers(0, cfg.d_vocab, size=(40, 8, 8))
    trained = train_tuned_lens(params, cfg, batches, learning_rate=1e-2)
    # the final entry is the model itself, trained or not
    np.testing.assert_allclose(trained.apply(params, cfg, stream)[-1], logits, rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    held_out = rng.integers(0, cfg.d_vocab, size=(8, 8))
    before = np.asarray(tuned_lens_kl(params, cfg, identity, held_out))
    after = np.asarray(tuned_lens_kl(params, cfg, trained, held_out))
    assert before[-1] == pytest.approx(0.0, abs=1e-5) and after[-1] == pytest.approx(0, abs=1e-5)
    assert (after[:-1] < 0.8 * before[:-1]).all(), (before, after)

    path = save_tuned_lens(trained, tmp_path / "model", cfg=cfg)
    assert path.name == "tuned_lens.npz"
    loaded = load_tuned_lens(tmp_path / "model", cfg)
    np.testing.assert_array_equal(loaded.A, trained.A)
    np.testing.assert_array_equal(loaded.b, trained.b)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "model")
    identity.save(tmp_path / "model", overwrite=True)
    np.testing.assert_array_equal(TunedLens.load(tmp_path / "model").A, identity.A)
    with pytest.raises(ValueError, match="do not fit"):
        load_tuned_lens(tmp_path / "model", SMALL_CONFIGS["gemma2_gqa"])
    with pytest.raises(FileNotFoundError):
        load_tuned_lens(tmp_path / "nowhere")


def test_bad_input():
    cfg = SMALL_CONFIGS["attn2_ln_bias"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, 1, 4)
    _, partial_stream = mj.run_with_stream(params, tokens, cfg, capture=["embed"])
    with pytest.raises(ValueError, match="capture='writes'"):
        logit_lens(params, cfg, partial_stream)
    with pytest.raises(ValueError, match="empty"):
        train_tuned_lens(params, cfg, [])
    with pytest.raises(ValueError, match="token ids"):
        train_tuned_lens(params, cfg, [tokens + 100])
    with pytest.raises(ValueError, match="no intermediate"):
        train_tuned_lens(random_model(SMALL_CONFIGS["attn0"]), SMALL_CONFIGS["attn0"], [tokens])
