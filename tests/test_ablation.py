"""Ablation sweeps: each entry against the same ablation run by hand with `mj.edits`
builders and a numpy cross-entropy; layer skipping leaves resid_post = resid_pre."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.causal.ablation import ablation_edits, ablation_effect, ablation_sweep

MLP2 = SMALL_CONFIGS["mlp_gelu"]
ATTN2 = SMALL_CONFIGS["attn2_ln_bias"]
ANSWERS = (3, 5)


def _np_loss(logits, tokens):
    x = np.asarray(logits, np.float64)[:, :-1]
    logz = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    picked = np.take_along_axis(x, np.asarray(tokens)[:, 1:, None], -1)[..., 0]
    return float(np.mean(logz - picked))


def _np_logit_diff(logits):
    last = np.asarray(logits, np.float64)[:, -1]
    return float(np.mean(last[:, ANSWERS[0]] - last[:, ANSWERS[1]]))


@pytest.mark.parametrize("cfg", [MLP2, ATTN2], ids=["mlp", "attn-only"])
def test_zero_ablating_a_layer_skips_the_block(cfg):
    params = random_model(cfg)
    tokens = random_tokens(cfg, 2, 6)
    for layer in range(cfg.n_layers):
        edits = ablation_edits(cfg, "layer", layer)
        _, stream = mj.run_with_stream(params, tokens, cfg, capture=["resid_pre", "resid_post"],
                                       edits=edits)  # fmt: skip
        np.testing.assert_array_equal(stream["resid_post"][layer], stream["resid_pre"][layer])


@pytest.mark.parametrize(
    "component, method",
    [("head", "zero"), ("mlp", "resample"), ("layer", "mean")],
)
def test_sweep_equals_ablations_run_by_hand(component, method):
    cfg = MLP2
    params = random_model(cfg)
    tokens = random_tokens(cfg, 3, 6, seed=1)
    reference = random_tokens(cfg, 3, 6, seed=2)
    result = ablation_sweep(params, cfg, tokens, component, method, reference_tokens=reference,
                            answers=ANSWERS)  # fmt: skip
    base = mj.forward(params, tokens, cfg)
    assert result.base_loss == pytest.approx(_np_loss(base, tokens), abs=1e-5)
    assert result.base_metric == pytest.approx(_np_logit_diff(base), abs=1e-5)

    sites = {"head": ["z"], "mlp": ["mlp_out"], "layer": ["attn_out", "mlp_out"]}[component]
    _, ref = mj.run_with_stream(params, reference, cfg, capture=sites)
    builders = {
        "zero": lambda s, **w: mj.edits.zero_ablate(s, **w),
        "mean": lambda s, **w: mj.edits.mean_ablate(s, ref[s], **w),
        "resample": lambda s, **w: mj.edits.patch(s, ref[s], **w),
    }
    for index in np.ndindex(result.loss.shape):
        where = dict(zip(("layer", "head"), index))
        edits = [builders[method](s, **where) for s in sites]
        logits = mj.forward(params, tokens, cfg, edits=edits)
        assert float(result.loss[index]) == pytest.approx(_np_loss(logits, tokens), abs=1e-5)
        assert float(result.metric[index]) == pytest.approx(_np_logit_diff(logits), abs=1e-5)
    np.testing.assert_allclose(result.loss_change, np.asarray(result.loss) - result.base_loss)
    assert np.ptp(np.asarray(result.loss)) > 1e-3  # ablations differ: the check has content


def test_zero_ablating_z_removes_the_heads_write():
    params = random_model(ATTN2)
    tokens = random_tokens(ATTN2, 2, 6)
    result = ablation_sweep(params, ATTN2, tokens, "head")
    assert result.metric is None and result.metric_change is None
    assert result.labels["head"] == ["H0", "H1", "H2", "H3"]
    for layer, head in [(0, 1), (1, 3)]:
        logits = mj.forward(params, tokens, ATTN2,
                            edits=[mj.edits.zero_ablate("head_out", layer=layer, head=head)])  # fmt: skip
        assert float(result.loss[layer, head]) == pytest.approx(_np_loss(logits, tokens), abs=1e-5)


def test_resample_from_the_batch_itself_and_ablation_effect():
    params = random_model(ATTN2)
    tokens = random_tokens(ATTN2, 3, 6)
    key = jax.random.key(7)
    result = ablation_sweep(params, ATTN2, tokens, "layer", "resample", key=key)
    _, ref = mj.run_with_stream(params, tokens, ATTN2, capture=["attn_out"])
    edits = ablation_edits(ATTN2, "layer", 1, method="resample", reference=ref, key=key)
    loss, metric = ablation_effect(params, ATTN2, tokens, edits, metric=None)
    assert metric is None
    assert float(result.loss[1]) == pytest.approx(loss, abs=1e-5)
    shuffled = mj.edits.resample("attn_out", ref["attn_out"], key=key, layer=1)
    logits = mj.forward(params, tokens, ATTN2, edits=[shuffled])
    assert loss == pytest.approx(_np_loss(logits, tokens), abs=1e-5)
    _, value = ablation_effect(
        params, ATTN2, tokens, edits, metric=mj.patching.logit_diff(*ANSWERS)
    )
    assert value == pytest.approx(_np_logit_diff(logits), abs=1e-5)


def test_mean_over_a_reference_of_another_length_averages_positions_too():
    params = random_model(ATTN2)
    tokens = random_tokens(ATTN2, 2, 6)
    reference = random_tokens(ATTN2, 3, 4, seed=9)
    result = ablation_sweep(params, ATTN2, tokens, "head", "mean", reference_tokens=reference)
    _, ref = mj.run_with_stream(params, reference, ATTN2, capture=["z"])
    mean = np.asarray(ref["z"], np.float64).mean(axis=(1, 2))  # [layer, head, d_head]
    for layer, head in [(0, 2), (1, 0)]:
        edit = mj.edits.patch("z", np.broadcast_to(mean[:, None, None], (2, 2, 6, 4, 6)),
                              layer=layer, head=head)  # fmt: skip
        logits = mj.forward(params, tokens, ATTN2, edits=[edit])
        assert float(result.loss[layer, head]) == pytest.approx(_np_loss(logits, tokens), abs=1e-5)


def test_bad_input():
    params = random_model(ATTN2)
    tokens = random_tokens(ATTN2, 2, 6)
    with pytest.raises(ValueError, match="component"):
        ablation_sweep(params, ATTN2, tokens, "neuron")
    with pytest.raises(ValueError, match="method"):
        ablation_sweep(params, ATTN2, tokens, "head", "random")
    with pytest.raises(ValueError, match="no MLPs"):
        ablation_sweep(params, ATTN2, tokens, "mlp")
    with pytest.raises(ValueError, match="key="):
        ablation_sweep(params, ATTN2, tokens, "head", "resample")
    with pytest.raises(ValueError, match="shape"):
        ablation_sweep(params, ATTN2, tokens, "head", "resample", reference_tokens=tokens[:, :4])
    with pytest.raises(ValueError, match="reference"):
        ablation_edits(ATTN2, "head", 0, 1, method="mean")
    with pytest.raises(ValueError, match="head="):
        ablation_edits(ATTN2, "head", 0)
    with pytest.raises(ValueError, match="out of range"):
        ablation_edits(ATTN2, "head", 2, 0)
    with pytest.raises(ValueError, match="out of range"):
        ablation_edits(ATTN2, "head", 0, 4)
