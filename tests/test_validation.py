"""Bad input gets a clear ValueError, raised in Python before any compiled code runs.

Inside jit, JAX clamps an out-of-range index silently (DESIGN.md, "validate at the
boundary"), so every check here also asserts that the compiled pass was never reached.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.model import edits as E


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if the compiled forward pass is reached."""

    def reached(*args, **kwargs):
        raise AssertionError("validation let bad input through to the compiled pass")

    monkeypatch.setattr(mj.model.transformer, "run", reached)


def _both_entry_points(params, tokens, cfg, match, **kwargs):
    with pytest.raises(ValueError, match=match):
        mj.forward(params, tokens, cfg, **kwargs)
    with pytest.raises(ValueError, match=match):
        mj.run_with_stream(params, tokens, cfg, **kwargs)


# -- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_tokens, match",
    [
        (lambda t: np.where(t == t[0, 0], -1, t), r"token ids must lie in \[0, 37\).*-1"),
        (lambda t: t + 37, r"token ids must lie in \[0, 37\).*d_vocab=37"),
        (lambda t: t.astype(np.float32), "integer dtype"),
        (lambda t: t[0], "shape \\[batch, pos\\], got 1-D"),
        (lambda t: t[None], "shape \\[batch, pos\\], got 3-D"),
        (lambda t: t.tolist(), "integer array"),
        (lambda t: t[:, :0], "no positions"),
    ],
    ids=["negative", "too_big", "float", "1d", "3d", "list", "empty"],
)
def test_bad_tokens(no_compile, make_tokens, match):
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg)
    _both_entry_points(params, make_tokens(random_tokens(cfg, 2, 6)), cfg, match)


def test_sequence_longer_than_learned_positions(no_compile):
    cfg = SMALL_CONFIGS["mlp_gelu"]
    tokens = random_tokens(cfg, 1, cfg.n_ctx + 1)
    _both_entry_points(random_model(cfg), tokens, cfg, "exceeds the learned positional table")


def test_cfg_must_be_a_model_config(no_compile):
    cfg = SMALL_CONFIGS["attn0"]
    with pytest.raises(ValueError, match="mechjax.ModelConfig"):
        mj.forward(random_model(cfg), random_tokens(cfg), cfg.to_dict())


# -- configs ----------------------------------------------------------------------------------

BASE = dict(d_vocab=11, d_model=8, n_layers=2, n_heads=4, d_head=2, n_ctx=8)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(n_kv_heads=3), "n_heads=4 is not divisible by n_kv_heads=3"),
        (dict(layer_types=("global",)), "layer_types has 1 entries for n_layers=2"),
        (dict(layer_types=("local", "global")), "local layers need sliding_window"),
        (dict(layer_types=("local", "sideways"), sliding_window=2), "'sideways'"),
        (dict(act_fn="swish"), "act_fn='swish' is unknown"),
        (dict(normalization="batchnorm"), "normalization='batchnorm' is unknown"),
        (dict(positional="alibi"), "positional='alibi' is unknown"),
        (dict(positional="rope", d_head=3), "RoPE needs an even number of rotated dims"),
        (dict(d_mlp=8, act_fn="solu", gated_mlp=True), "gated MLP with SoLU"),
        (dict(normalization="none", qk_norm=True), "post/qk norms need"),
        (dict(d_model=0), "d_model must be a positive integer"),
        (dict(n_layers=-1), "n_layers must be >= 0"),
        (dict(sliding_window=0), "sliding_window must be positive"),
        (dict(final_logit_softcap=-1.0), "final_logit_softcap must be positive"),
        (dict(dtype="float8"), "dtype='float8' is unknown"),
    ],
)
def test_inconsistent_configs(changes, match):
    with pytest.raises(ValueError, match=match):
        mj.ModelConfig(**{**BASE, **changes})


def test_config_is_frozen_hashable_and_round_trips():
    for cfg in [*SMALL_CONFIGS.values(), *(make() for make in mj.presets.PRESETS.values())]:
        again = mj.ModelConfig.from_json(cfg.to_json())
        assert again == cfg and hash(again) == hash(cfg)
        assert mj.ModelConfig.from_dict(cfg.to_dict()) == cfg
    cfg = SMALL_CONFIGS["gemma2_gqa"]
    assert {cfg: 1}[cfg.replace()] == 1  # usable as a dict key / static jit argument
    assert cfg.replace(n_layers=1, layer_types=("local",)) != cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 5
    # layer types given as a list become a tuple, so the config stays hashable
    listed = mj.ModelConfig(**BASE, layer_types=["global", "local"], sliding_window=2)
    assert listed.layer_types == ("global", "local") and hash(listed)
    with pytest.raises(ValueError, match=r"unknown fields \['n_experts'\]"):
        mj.ModelConfig.from_dict({**BASE, "n_experts": 8})


# -- params -----------------------------------------------------------------------------------


def test_params_that_do_not_match_the_config(no_compile):
    cfg = SMALL_CONFIGS["gemma2_gqa"]
    params = random_model(cfg)
    tokens = random_tokens(cfg)
    bad = dict(params, W_extra=np.zeros(3), blocks=dict(params["blocks"]))
    del bad["ln_final_w"]
    bad["blocks"]["W_Q"] = bad["blocks"]["W_Q"][:, :2]
    # every problem is listed in one message
    with pytest.raises(ValueError, match="params do not match the config") as error:
        mj.forward(bad, tokens, cfg)
    for problem in (
        "missing ln_final_w (24,)",
        "unexpected W_extra",
        "blocks.W_Q has shape (3, 2, 24, 6), expected (3, 4, 24, 6)",
        "mechjax.init_params(key, cfg)",  # and how to fix it
    ):
        assert problem in str(error.value)
    _both_entry_points(bad, tokens, cfg, "missing ln_final_w")
    # params of another config (untied: an extra W_U)
    other = random_model(cfg.replace(tied_embeddings=False))
    _both_entry_points(other, tokens, cfg, "unexpected W_U")
    with pytest.raises(ValueError, match="params should be a dict"):
        mj.check_params([params], cfg)


# -- edits and captures -------------------------------------------------------------------------


def test_unknown_site_at_construction():
    with pytest.raises(ValueError, match="unknown site 'resid_middle'"):
        E.zero_ablate("resid_middle")
    with pytest.raises(ValueError, match="unknown site"):
        E.patch("head_writes", np.zeros(3))  # a stream part, not an editable site


@pytest.mark.parametrize(
    "config_name, edit, match",
    [
        ("attn2_ln_bias", E.zero_ablate("mlp_out"), "site 'mlp_out', which this model does not"),
        ("gemma3", E.zero_ablate("pos_embed"), "site 'pos_embed', which this model does not"),
        ("attn0", E.zero_ablate("resid_pre"), "site 'resid_pre', which this model does not"),
        ("attn1_nonorm", E.scale("ln1_scale", 2.0), "site 'ln1_scale', which"),
        (
            "gemma2_gqa",
            E.zero_ablate("resid_pre", layer=3),
            "layer index 3 out of range.*valid: 0..2",
        ),
        ("gemma2_gqa", E.zero_ablate("resid_pre", layer=-1), "layer index -1 out of range"),
        ("gemma2_gqa", E.zero_ablate("q", head=4), "head index 4.*valid: 0..3"),
        ("gemma2_gqa", E.zero_ablate("k", head=2), "head index 2.*'k'.*valid: 0..1"),
        ("gemma2_gqa", E.zero_ablate("z", pos=[1, 9]), r"pos index \[1, 9\].*valid: 0..7"),
        ("gemma2_gqa", E.zero_ablate("resid_pre", head=0), "has no head axis"),
        ("gemma2_gqa", E.zero_ablate("embed", layer=0), "has no layer axis"),
        ("gemma2_gqa", "not an edit", "is a str, not a mechjax Edit"),
    ],
)
def test_bad_edits(no_compile, config_name, edit, match):
    cfg = SMALL_CONFIGS[config_name]
    _both_entry_points(random_model(cfg), random_tokens(cfg, 2, 8), cfg, match, edits=[edit])


def test_patch_value_with_wrong_layer_axis(no_compile):
    cfg = SMALL_CONFIGS["gemma2_gqa"]  # 3 layers
    value = np.zeros((2, 2, 8, cfg.d_model), np.float32)  # a stack from a 2-layer model
    match = r"leading layer axis of 3.*got shape \(2, 2, 8, 24\)"
    edit = E.patch("resid_pre", value)
    _both_entry_points(random_model(cfg), random_tokens(cfg, 2, 8), cfg, match, edits=[edit])
    edit = E.mean_ablate("attn_out", value)  # the mean keeps the (wrong) layer axis
    match = r"leading layer axis of 3.*got shape \(2, 1, 8, 24\)"
    _both_entry_points(random_model(cfg), random_tokens(cfg, 2, 8), cfg, match, edits=[edit])


def test_capturing_what_the_model_lacks(no_compile):
    cfg = SMALL_CONFIGS["attn2_ln_bias"]
    params, tokens = random_model(cfg), random_tokens(cfg)
    with pytest.raises(ValueError, match=r"cannot capture \['mlp_out'\]"):
        mj.run_with_stream(params, tokens, cfg, capture=["mlp_out", "pattern"])
    with pytest.raises(ValueError, match=r"cannot capture \['resid_middle'\]"):
        mj.run_with_stream(params, tokens, cfg, capture="resid_middle")
