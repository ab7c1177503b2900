"""mechjax <-> TransformerLens conversion, checked against TransformerLens 3.9 itself.

Reference: `HookedTransformer` built from the exported config (or a randomised TL model
converted the other way), compared on logits and on cached activations at every hook
point both libraries name.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.io.transformer_lens import (
    from_hooked_transformer,
    from_transformer_lens,
    to_hooked_transformer,
    to_transformer_lens,
)

torch = pytest.importorskip("torch")
transformer_lens = pytest.importorskip("transformer_lens")

# TL hook (under blocks.{layer}. when per layer) -> our site; `1/` marks TL's norm divisor
LAYER_HOOKS = {
    "hook_resid_pre": "resid_pre",
    "ln1.hook_scale": "1/ln1_scale",
    "attn.hook_q": "q",
    "attn.hook_k": "k",
    "attn.hook_v": "v",
    "attn.hook_attn_scores": "scores",
    "attn.hook_pattern": "pattern",
    "attn.hook_z": "z",
    "hook_attn_out": "attn_out",
    "hook_resid_mid": "resid_mid",
    "ln2.hook_scale": "1/ln2_scale",
    "mlp.hook_pre": "mlp_pre",
    "mlp.hook_pre_linear": "mlp_pre_linear",
    "mlp.hook_post": "mlp_post",
    "hook_mlp_out": "mlp_out",
    "hook_resid_post": "resid_post",
}
TOP_HOOKS = {
    "hook_embed": "embed",
    "hook_pos_embed": "pos_embed",
    "ln_final.hook_scale": "1/ln_final_scale",
}

_BASE = dict(d_vocab=37, d_model=24, n_heads=4, d_head=6, n_ctx=16)
EXPORT_CASES = {
    name: SMALL_CONFIGS[name]
    for name in (
        "attn0",
        "attn1_nonorm",
        "attn2_ln_bias",
        "attn3_nopos",
        "mlp_gelu",
        "mlp_relu",
        "mlp_solu",
    )
}
EXPORT_CASES.update(
    gelu_tanh_gqa_tied=mj.ModelConfig(**_BASE, n_layers=2, n_kv_heads=2, d_mlp=32,
                                      act_fn="gelu_tanh", use_attn_bias=True,
                                      tied_embeddings=True),
    solu_nonorm=mj.ModelConfig(**_BASE, n_layers=1, d_mlp=32, act_fn="solu",
                               normalization="none", positional="none"),
    rms_gated_capped=mj.ModelConfig(
        **_BASE, n_layers=2, n_kv_heads=1, d_mlp=32, act_fn="gelu_tanh", gated_mlp=True,
        normalization="rmsnorm", query_pre_attn_scalar=8.0, attn_logit_softcap=5.0,
        final_logit_softcap=3.0,
    ),
)  # fmt: skip


def _model_params(cfg):
    params = random_model(cfg)
    if cfg.act_fn == "solu" and cfg.normalization != "layernorm":
        # TL's SoLU LayerNorm has no weights outside normalization "LN": keep ours identity
        blocks = dict(params["blocks"])
        blocks["ln_mlp_w"] = jax.numpy.ones_like(blocks["ln_mlp_w"])
        blocks["ln_mlp_b"] = jax.numpy.zeros_like(blocks["ln_mlp_b"])
        params = {**params, "blocks": blocks}
    if cfg.gated_mlp and cfg.use_mlp_bias:
        blocks = dict(params["blocks"])
        blocks["b_in"] = jax.numpy.zeros_like(blocks["b_in"])
        params = {**params, "blocks": blocks}
    return params


def _tokens(cfg, seed=0):
    return random_tokens(cfg, batch=2, n_pos=min(10, cfg.n_ctx), seed=seed)


def _assert_same_run(model, params, cfg, tokens):
    """Logits within 1e-5 and every shared hook point equal (float32)."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor(tokens))
    ours_logits, stream = mj.run_with_stream(params, tokens, cfg, capture="all")
    assert np.abs(np.asarray(ours_logits) - logits.numpy()).max() <= 1e-5

    def compare(tl_name, site, layer=None):
        reciprocal = site.startswith("1/")
        site = site.removeprefix("1/")
        if site not in stream:
            return False
        assert tl_name in cache, f"TL did not record {tl_name}, which we have as {site}"
        ours = np.asarray(stream[site] if layer is None else stream[site][layer], np.float64)
        theirs = cache[tl_name].double().numpy()
        if reciprocal:
            ours = 1.0 / ours
        if site == "scores":  # compare where the causal mask lets the query see the key
            keep = np.tril(np.ones(theirs.shape[-2:], bool))
            ours, theirs = ours[..., keep], theirs[..., keep]
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=tl_name)
        return True

    compared = [name for name, site in TOP_HOOKS.items() if compare(name, site)]
    for layer in range(cfg.n_layers):
        compared += [
            name
            for name, site in LAYER_HOOKS.items()
            if compare(f"blocks.{layer}.{name}", site, layer)
        ]
    if cfg.positional == "none":  # exported as a zero W_pos
        assert not cache["hook_pos_embed"].any()
    # nothing we capture was skipped for want of a TL counterpart
    mapped = {s.removeprefix("1/") for s in {**TOP_HOOKS, **LAYER_HOOKS}.values()}
    expected_count = sum(
        (cfg.n_layers if mj.sites.is_per_layer(s) else 1)
        for s in mj.sites.available_sites(cfg)
        if s in mapped
    )
    assert len(compared) == expected_count


def _params_equal(a, b) -> bool:
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_export_matches_transformer_lens(name):
    cfg = EXPORT_CASES[name]
    params = _model_params(cfg)
    state_dict, tl_cfg = to_transformer_lens(params, cfg)
    model = to_hooked_transformer(params, cfg)
    # the state dict holds exactly the parameters of a HookedTransformer of that config
    assert set(state_dict) == {n for n, _ in model.named_parameters()}
    _assert_same_run(model, params, cfg, _tokens(cfg))

    back, back_cfg = from_transformer_lens(state_dict, cfg)
    assert back_cfg == cfg
    assert _params_equal(back, params)


TL_CASES = {
    "ln_gqa_gelu_new": dict(n_layers=2, d_mlp=32, act_fn="gelu_new", n_key_value_heads=2),
    "lnpre_attn_only_scaled": dict(
        n_layers=3, attn_only=True, normalization_type="LNPre", attn_scale=2.0
    ),
    "rms_gated_capped": dict(
        n_layers=1, d_mlp=32, act_fn="gelu", gated_mlp=True, normalization_type="RMS",
        attn_scores_soft_cap=5.0, output_logits_soft_cap=3.0,
    ),
    "nonorm_solu": dict(n_layers=1, d_mlp=32, act_fn="solu_ln", normalization_type=None),
}  # fmt: skip


def _random_tl_model(overrides, seed=0):
    settings = dict(d_model=24, n_ctx=16, d_head=6, n_heads=4, d_vocab=37)
    settings.setdefault("normalization_type", "LN")
    settings.update(overrides)
    model = transformer_lens.HookedTransformer(transformer_lens.HookedTransformerConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.b_in") and model.cfg.gated_mlp:
                continue  # TL's gated b_in sits after the product: only zero converts
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", sorted(TL_CASES))
def test_import_random_transformer_lens_model(name):
    model = _random_tl_model(TL_CASES[name])
    params, cfg = from_hooked_transformer(model)
    assert cfg.use_attn_bias and cfg.use_unembed_bias  # TL's biases are kept
    _assert_same_run(model, params, cfg, _tokens(cfg, seed=1))
    if model.cfg.normalization_type in ("LN", "RMS", None):  # not the folded variants
        state_dict, _ = to_transformer_lens(params, cfg)
        original = {k: v for k, v in model.state_dict().items() if k in state_dict}
        assert set(original) == set(state_dict)
        assert all(torch.equal(original[k], state_dict[k]) for k in state_dict)


def test_template_flags_turn_on_for_nonzero_weights():
    cfg = mj.ModelConfig(**_BASE, n_layers=1, d_mlp=32, act_fn="relu", positional="none",
                         tied_embeddings=True)  # fmt: skip
    params = random_model(cfg)
    state_dict, tl_cfg = to_transformer_lens(params, cfg)
    for key in ("blocks.0.attn.b_O", "blocks.0.mlp.b_out", "unembed.b_U", "pos_embed.W_pos"):
        assert not state_dict[key].any()
        state_dict[key] = state_dict[key] + 0.5
    state_dict["unembed.W_U"] = state_dict["unembed.W_U"] * 1.5

    new_params, new_cfg = from_transformer_lens(state_dict, cfg)
    assert new_cfg == cfg.replace(
        use_attn_bias=True,
        use_mlp_bias=True,
        use_unembed_bias=True,
        positional="learned",
        tied_embeddings=False,
    )
    model = transformer_lens.HookedTransformer(tl_cfg)
    model.load_state_dict(state_dict, strict=False)
    tokens = _tokens(cfg)
    with torch.no_grad():
        theirs = model.eval()(torch.tensor(tokens)).numpy()
    ours = np.asarray(mj.forward(new_params, tokens, new_cfg))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bfloat16_round_trip_is_bitwise():
    cfg = EXPORT_CASES["gelu_tanh_gqa_tied"].replace(dtype="bfloat16")
    params = _model_params(cfg)
    state_dict, tl_cfg = to_transformer_lens(params, cfg)
    assert tl_cfg.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in state_dict.values())
    back, back_cfg = from_transformer_lens(state_dict, cfg)
    assert back_cfg == cfg
    views = [jax.tree_util.tree_map(lambda x: np.asarray(x).view(np.uint16), p)
             for p in (back, params)]  # fmt: skip
    assert _params_equal(*views)
    back_tl, back_tl_cfg = from_transformer_lens(state_dict, tl_cfg)
    assert back_tl_cfg.dtype == "bfloat16" and back_tl["W_E"].dtype == np.dtype("bfloat16")


def test_unsupported_models_raise_clear_errors():
    with pytest.raises(ValueError, match="rope"):
        to_transformer_lens(random_model(SMALL_CONFIGS["gemma1_mqa"]), SMALL_CONFIGS["gemma1_mqa"])
    solu = EXPORT_CASES["solu_nonorm"]
    with pytest.raises(ValueError, match="ln_mlp_w.*identity"):
        to_transformer_lens(random_model(solu), solu)
    gated = EXPORT_CASES["rms_gated_capped"].replace(use_mlp_bias=True)
    with pytest.raises(ValueError, match="b_in"):
        to_transformer_lens(random_model(gated), gated)
    rotary = transformer_lens.HookedTransformerConfig(
        n_layers=1, d_model=24, n_ctx=16, d_head=6, n_heads=4, d_vocab=37, attn_only=True,
        positional_embedding_type="rotary",
    )  # fmt: skip
    with pytest.raises(ValueError, match="positional_embedding_type='rotary'"):
        from_transformer_lens({}, rotary)
    with pytest.raises(ValueError, match="HookedTransformerConfig or a mechjax.ModelConfig"):
        from_transformer_lens({}, {"d_model": 24})


def test_state_dict_mismatch_names_the_entries():
    cfg = EXPORT_CASES["mlp_gelu"]
    state_dict, _ = to_transformer_lens(random_model(cfg), cfg)
    broken = dict(state_dict)
    del broken["blocks.1.mlp.W_in"]
    broken["blocks.0.attn.W_Q"] = broken["blocks.0.attn.W_Q"][:, :, :5]
    broken["blocks.0.attn.extra"] = torch.zeros(3)
    with pytest.raises(ValueError) as info:
        from_transformer_lens(broken, cfg)
    message = str(info.value)
    assert "missing blocks.1.mlp.W_in" in message
    assert "blocks.0.attn.W_Q has shape (4, 24, 5), expected (4, 24, 6)" in message
    assert "unexpected blocks.0.attn.extra" in message
    with pytest.raises(ValueError, match="unexpected blocks.0.ln1.b"):  # RMSNorm has no bias
        from_transformer_lens(state_dict, cfg.replace(normalization="rmsnorm"))


def test_module_import_does_not_load_torch():
    code = (
        "import sys, mechjax.io.transformer_lens; "
        "assert 'torch' not in sys.modules and 'transformer_lens' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
