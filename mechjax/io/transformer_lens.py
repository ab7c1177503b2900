"""Convert models between mechjax and TransformerLens 3.x (`HookedTransformer`).

    to_transformer_lens(params, cfg)       -> (state_dict, HookedTransformerConfig)
    to_hooked_transformer(params, cfg)     -> HookedTransformer (weights loaded, eval mode)
    from_transformer_lens(state_dict, cfg) -> (params, ModelConfig)   cfg: TL's or ours
    from_hooked_transformer(model)         -> (params, ModelConfig)

TransformerLens stores the same per-head layouts as mechjax (`W_Q [head, d_model,
d_head]`, `W_O [head, d_head, d_model]`, `W_in [d_model, d_mlp]`, `W_U [d_model, vocab]`),
one tensor per layer under `blocks.{layer}.attn.W_Q` etc. (read off the state dict of a
config-built `HookedTransformer`). Converting is renaming, stacking the layers along a
leading `layer` axis, and filling in what one side has and the other lacks:

* TL always has biases (`b_Q b_K b_V b_O b_in b_out b_U`): a config without them exports
  zeros. TL has no "no positions" option: `positional="none"` exports a zero `W_pos`
  (adding zero changes nothing). `HookedTransformer` does not tie embeddings: a tied
  model exports `W_U = W_E.T`.
* Grouped-query attention: with `n_key_value_heads` set, TL 3.9 stores `_W_K _W_V _b_K
  _b_V [kv_head, ...]` and gives query head h the key/value head h // group_size
  (`repeat_interleave`), mechjax's grouping. A model with as many kv heads as heads is
  exported as plain multi-head attention (`W_K`, `W_V`).
* SoLU: TL's act_fn "solu_ln" is x * softmax(x) followed by a LayerNorm over d_mlp
  (`mlp.ln.w/b`, our `ln_mlp_w/b`) when `normalization_type="LN"`, and by a LayerNorm
  without weights otherwise (then ours must be the identity: w = 1, b = 0).
* Activations: "gelu" (exact), "gelu_new" (tanh approximation; "gelu_pytorch_tanh" and
  "gelu_fast" are the same formula and import as gelu_tanh too), "relu".
* Gated MLPs: TL adds `b_in` after the product act(x W_gate) * (x W_in), mechjax adds it
  to x W_in before; the two agree only when b_in = 0, so other values raise ValueError.
* Attention scale: TL divides scores by `attn_scale` (sqrt(d_head) by default), mechjax
  multiplies by `query_pre_attn_scalar**-0.5`: `query_pre_attn_scalar = attn_scale**2`.
  Soft-caps map to `attn_scores_soft_cap` / `output_logits_soft_cap`.
* Norms: "LN" = LayerNorm, "RMS" = RMSNorm (both eps = `cfg.eps`); "LNPre"/"RMSPre"
  (folded, weightless) import as identity weights. TL's `hook_scale` is the divisor
  sqrt(var + eps); mechjax's `ln1_scale` etc. are its reciprocal.

Importing with one of our configs as the template returns that config, adjusted where the
weights need it: nonzero biases the template lacks turn its bias flag on (all-zero ones
are dropped), a nonzero `W_pos` turns `positional="none"` into "learned", and a `W_U`
other than `W_E.T` unties tied embeddings. Importing with a TL config keeps everything TL
stores (all biases, learned positions, untied embeddings). Rotary embeddings, local
attention, post/qk norms, scaled embeddings and offset norm weights have no counterpart
here and raise ValueError naming the feature.

torch and transformer_lens are imported only inside the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..model.checks import check_config
from ..model.config import ModelConfig
from ..model.params import Params, check_params, param_shapes
from .torch_arrays import dtype_name, to_numpy, to_torch, torch_dtype

_ACT_TO_TL = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "solu": "solu_ln"}
_ACT_FROM_TL = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "solu_ln": "solu",
}
_NORM_TO_TL = {"layernorm": "LN", "rmsnorm": "RMS", "none": None}
_NORM_FROM_TL = {"LN": "layernorm", "LNPre": "layernorm", "RMS": "rmsnorm", "RMSPre": "rmsnorm"}
_NORM_FROM_TL[None] = "none"

# our name -> TL name; block parameters live under `blocks.{layer}.`
_TOP_TO_TL = {
    "W_E": "embed.W_E",
    "W_pos": "pos_embed.W_pos",
    "W_U": "unembed.W_U",
    "b_U": "unembed.b_U",
    "ln_final_w": "ln_final.w",
    "ln_final_b": "ln_final.b",
}
_BLOCK_TO_TL = {
    "W_Q": "attn.W_Q",
    "W_K": "attn.W_K",
    "W_V": "attn.W_V",
    "W_O": "attn.W_O",
    "b_Q": "attn.b_Q",
    "b_K": "attn.b_K",
    "b_V": "attn.b_V",
    "b_O": "attn.b_O",
    "ln1_w": "ln1.w",
    "ln1_b": "ln1.b",
    "ln2_w": "ln2.w",
    "ln2_b": "ln2.b",
    "W_in": "mlp.W_in",
    "b_in": "mlp.b_in",
    "W_gate": "mlp.W_gate",
    "W_out": "mlp.W_out",
    "b_out": "mlp.b_out",
    "ln_mlp_w": "mlp.ln.w",
    "ln_mlp_b": "mlp.ln.b",
}
_GROUPED = ("W_K", "W_V", "b_K", "b_V")  # stored as `_W_K` etc. by TL's grouped-query attention
_BUFFERS = ("mask", "IGNORE")  # non-parameter entries of a HookedTransformer state dict


# -- which models the two libraries share ------------------------------------------------------


def _check_shared(cfg: ModelConfig) -> None:
    """Raise a ValueError listing the features of `cfg` a HookedTransformer cannot express."""
    problems = []
    if cfg.positional == "rope":
        problems.append("positional='rope' (only learned or no positional embeddings convert)")
    if cfg.norm_weight_offset != 0:
        problems.append(f"norm_weight_offset={cfg.norm_weight_offset} (TL norms multiply by w)")
    if cfg.normalization != "none" and not cfg.final_norm:
        problems.append("final_norm=False with a norm (TL always has ln_final)")
    if cfg.scale_embeddings:
        problems.append("scale_embeddings=True")
    for flag in ("post_attn_norm", "post_mlp_norm", "qk_norm"):
        if getattr(cfg, flag):
            problems.append(f"{flag}=True")
    if cfg.has_local_layers:
        problems.append("local (sliding-window) layers")
    if cfg.parallel_attn_mlp:
        problems.append("parallel_attn_mlp=True (not converted here)")
    if cfg.act_fn not in _ACT_TO_TL:
        problems.append(f"act_fn={cfg.act_fn!r}")
    if cfg.use_attn_out_bias is not None and cfg.use_attn_out_bias != cfg.use_attn_bias:
        problems.append("use_attn_out_bias differing from use_attn_bias")
    if problems:
        raise ValueError(
            f"config {cfg.name or '(unnamed)'} has no TransformerLens counterpart here: "
            + "; ".join(problems)
            + ". Only attention-only and MLP toys (LayerNorm/RMSNorm/none, learned or no "
            "positions) convert."
        )


def _full_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with everything a HookedTransformer always stores: biases, learned positions
    and an untied unembedding."""
    return cfg.replace(
        use_attn_bias=True,
        use_mlp_bias=True,
        use_unembed_bias=True,
        positional="learned",
        tied_embeddings=False,
    )


def _stored_by_tl(name: str, tl_norm: str | None) -> bool:
    """Whether TL keeps our parameter `name` under `normalization_type=tl_norm` (its
    weightless norms, LNPre/RMSPre and SoLU's LayerNorm outside "LN", keep nothing)."""
    if name == "b_gate":  # TL's gated MLP has no gate bias (mechjax's is Llama's mlp_bias)
        return False
    if name.startswith("ln_mlp"):
        return tl_norm == "LN"
    if name.startswith("ln"):
        return tl_norm == "LN" if name.endswith("_b") else tl_norm in ("LN", "RMS")
    return True


def _tl_key(name: str, layer: int | None, grouped: bool) -> str:
    if layer is None:
        return _TOP_TO_TL[name]
    tl_name = _BLOCK_TO_TL[name]
    if grouped and name in _GROUPED:
        tl_name = tl_name.replace("attn.", "attn._")
    return f"blocks.{layer}.{tl_name}"


def _layout(full_cfg: ModelConfig, tl_norm: str | None, grouped: bool):
    """Every parameter of `full_cfg` as `(our name, layer or None, TL key or None when TL
    stores nothing for it, shape of one entry)`."""
    shapes = param_shapes(full_cfg)
    entries = []
    for name, shape in shapes.items():
        if name != "blocks":
            key = _tl_key(name, None, grouped) if _stored_by_tl(name, tl_norm) else None
            entries.append((name, None, key, tuple(shape)))
    for name, shape in shapes["blocks"].items():
        for layer in range(full_cfg.n_layers):
            key = _tl_key(name, layer, grouped) if _stored_by_tl(name, tl_norm) else None
            entries.append((name, layer, key, tuple(shape[1:])))
    return entries


def _identity_norm(name: str, shape, dtype) -> np.ndarray:
    """The value of a norm parameter TL does not store: weight 1, bias 0."""
    return (np.ones if name.endswith("_w") else np.zeros)(shape, dtype)


# -- mechjax -> TransformerLens ------------------------------------------------------------------


def transformer_lens_config(cfg: ModelConfig):
    """The `HookedTransformerConfig` of the same architecture as `cfg`."""
    from transformer_lens import HookedTransformerConfig

    _check_shared(cfg)
    return HookedTransformerConfig(
        model_name=cfg.name or "custom",
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_ctx=cfg.n_ctx,
        d_head=cfg.d_head,
        n_heads=cfg.n_heads,
        n_key_value_heads=None if cfg.n_kv_heads == cfg.n_heads else cfg.n_kv_heads,
        d_vocab=cfg.d_vocab,
        d_mlp=cfg.d_mlp,
        attn_only=cfg.attn_only,
        act_fn=None if cfg.attn_only else _ACT_TO_TL[cfg.act_fn],
        gated_mlp=cfg.gated_mlp,
        normalization_type=_NORM_TO_TL[cfg.normalization],
        eps=cfg.norm_eps,
        positional_embedding_type="standard",
        use_attn_scale=True,
        attn_scale=math.sqrt(cfg.query_pre_attn_scalar or cfg.d_head),
        attn_scores_soft_cap=cfg.attn_logit_softcap or -1.0,
        output_logits_soft_cap=cfg.final_logit_softcap or -1.0,
        dtype=torch_dtype(cfg.dtype),
    )


def _complete(params: Params, cfg: ModelConfig) -> dict:
    """`params` of `cfg` as numpy arrays laid out for `_full_config(cfg)`: absent biases
    and an absent `W_pos` become zeros, an absent (tied) `W_U` becomes `W_E.T`."""
    shapes = param_shapes(_full_config(cfg))
    dtype = np.asarray(params["W_E"]).dtype
    full: dict[str, Any] = {}
    for name, shape in shapes.items():
        if name == "blocks":
            continue
        if name in params:
            full[name] = np.asarray(params[name])
        elif name == "W_U":
            full[name] = np.asarray(params["W_E"]).T
        else:
            full[name] = np.zeros(shape, dtype)
    full["blocks"] = {
        name: np.asarray(params["blocks"][name])
        if name in params["blocks"]
        else np.zeros(shape, dtype)
        for name, shape in shapes["blocks"].items()
    }
    return full


def to_transformer_lens(params: Params, cfg: ModelConfig):
    """`(state_dict, tl_cfg)`: TransformerLens parameter tensors (CPU, the params' dtype)
    keyed as `HookedTransformer.state_dict()` keys them, and the matching config.

    The state dict holds parameters only (not TL's `mask`/`IGNORE` buffers); load it with
    `to_hooked_transformer` or `model.load_state_dict(state_dict, strict=False)`.
    """
    check_config(cfg)
    check_params(params, cfg)
    tl_cfg = transformer_lens_config(cfg)
    full = _complete(params, cfg)
    if cfg.gated_mlp and np.any(full["blocks"]["b_in"] != 0):
        raise ValueError(
            "cannot export a gated MLP with nonzero b_in: TransformerLens adds b_in after "
            "act(x W_gate) * (x W_in), mechjax before the product. Zero b_in or keep the "
            "model in mechjax."
        )
    if cfg.gated_mlp and np.any(full["blocks"].get("b_gate", 0) != 0):
        raise ValueError(
            "cannot export a gated MLP with a nonzero gate bias b_gate: TransformerLens has "
            "none. Keep the model in mechjax (or export it to HuggingFace)."
        )
    state_dict = {}
    tl_norm = _NORM_TO_TL[cfg.normalization]
    grouped = tl_cfg.n_key_value_heads is not None
    for name, layer, key, shape in _layout(_full_config(cfg), tl_norm, grouped):
        value = full[name] if layer is None else full["blocks"][name][layer]
        if key is None:
            # TL's weightless LayerNorm (SoLU outside normalization "LN") is the identity
            if not np.array_equal(value, _identity_norm(name, shape, value.dtype)):
                raise ValueError(
                    f"{name} (layer {layer}) is not the identity, but TransformerLens "
                    f"keeps no weights for SoLU's LayerNorm with normalization="
                    f"{cfg.normalization!r}; use normalization='layernorm' to export it"
                )
            continue
        state_dict[key] = to_torch(value)
    return state_dict, tl_cfg


def to_hooked_transformer(params: Params, cfg: ModelConfig):
    """A `HookedTransformer` built from `cfg`'s TL config with `params` loaded, in eval mode."""
    from transformer_lens import HookedTransformer

    state_dict, tl_cfg = to_transformer_lens(params, cfg)
    model = HookedTransformer(tl_cfg)
    result = model.load_state_dict(state_dict, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [key for key in result.missing_keys if key not in buffers]
    if missing or result.unexpected_keys:  # a mismatch here is a bug in this module
        raise RuntimeError(
            f"TransformerLens model does not match the exported state dict: missing "
            f"{missing}, unexpected {list(result.unexpected_keys)}"
        )
    return model.eval()


# -- TransformerLens -> mechjax ------------------------------------------------------------------


def _config_from_tl(tl_cfg) -> ModelConfig:
    """The ModelConfig of a HookedTransformerConfig (all of TL's biases kept)."""
    get = lambda name, default=None: getattr(tl_cfg, name, default)  # noqa: E731
    unsupported = {
        "positional_embedding_type": get("positional_embedding_type") != "standard",
        "normalization_type": get("normalization_type") not in _NORM_FROM_TL,
        "act_fn": not get("attn_only") and get("act_fn") not in _ACT_FROM_TL,
        "final_rms": bool(get("final_rms")),
        "use_local_attn": bool(get("use_local_attn")),
        "parallel_attn_mlp": bool(get("parallel_attn_mlp")),
        "use_normalization_before_and_after": bool(get("use_normalization_before_and_after")),
        "use_qk_norm": bool(get("use_qk_norm")),
        "post_embedding_ln": bool(get("post_embedding_ln")),
        "scale_attn_by_inverse_layer_idx": bool(get("scale_attn_by_inverse_layer_idx")),
        "num_experts": get("num_experts") is not None,
        "use_attention_sinks": bool(get("use_attention_sinks")),
        "use_logn_attn": bool(get("use_logn_attn")),
        "clip_qkv": get("clip_qkv") is not None,
        "attention_dir": get("attention_dir", "causal") != "causal",
        "d_vocab_out": get("d_vocab_out", tl_cfg.d_vocab) != tl_cfg.d_vocab,
    }
    bad = [f"{name}={get(name)!r}" for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ValueError(
            f"TransformerLens config {get('model_name')!r} has no mechjax counterpart: "
            + ", ".join(bad)
            + f". Supported: positional_embedding_type 'standard', normalization_type in "
            f"{list(_NORM_FROM_TL)}, act_fn in {list(_ACT_FROM_TL)}, causal global attention."
        )
    scale = float(tl_cfg.attn_scale) if get("use_attn_scale", True) else 1.0
    scalar = scale * scale
    attn_only = bool(tl_cfg.attn_only)
    softcap = lambda cap: float(cap) if cap is not None and cap > 0 else None  # noqa: E731
    return ModelConfig(
        name=get("model_name") or "",
        d_vocab=tl_cfg.d_vocab,
        d_model=tl_cfg.d_model,
        n_layers=tl_cfg.n_layers,
        n_heads=tl_cfg.n_heads,
        n_kv_heads=get("n_key_value_heads") or tl_cfg.n_heads,
        d_head=tl_cfg.d_head,
        n_ctx=tl_cfg.n_ctx,
        d_mlp=None if attn_only else tl_cfg.d_mlp,
        act_fn="gelu" if attn_only else _ACT_FROM_TL[tl_cfg.act_fn],
        gated_mlp=bool(get("gated_mlp")) and not attn_only,
        normalization=_NORM_FROM_TL[tl_cfg.normalization_type],
        norm_eps=float(tl_cfg.eps),
        positional="learned",
        use_attn_bias=True,
        use_mlp_bias=not attn_only,
        use_unembed_bias=True,
        query_pre_attn_scalar=None if math.isclose(scalar, tl_cfg.d_head) else scalar,
        attn_logit_softcap=softcap(get("attn_scores_soft_cap")),
        final_logit_softcap=softcap(get("output_logits_soft_cap")),
        dtype=dtype_name(tl_cfg.dtype),
    )


def _fit_template(full: dict, template: ModelConfig) -> tuple[dict, ModelConfig]:
    """Shape full (TL-complete) params to `template`: drop the biases, positions and
    unembedding the template lacks when they are trivial (zero, zero, `W_E.T`), and
    switch the template's flag instead where they are not."""
    top = {name: value for name, value in full.items() if name != "blocks"}
    blocks = dict(full["blocks"])
    changes: dict[str, Any] = {}
    groups = (
        ("use_attn_bias", blocks, ("b_Q", "b_K", "b_V", "b_O")),
        ("use_mlp_bias", blocks, ("b_in", "b_out", "b_gate")),
        ("use_unembed_bias", top, ("b_U",)),
    )
    for flag, where, names in groups:
        present = [name for name in names if name in where]
        if getattr(template, flag) or not present:
            continue
        if any(np.any(where[name] != 0) for name in present):
            changes[flag] = True
        else:
            for name in present:
                del where[name]
    if template.use_attn_bias and not template.has_attn_out_bias and "b_O" in blocks:
        if np.any(blocks["b_O"] != 0):  # Qwen 2 style template, but TL's b_O is in use
            changes["use_attn_out_bias"] = True
        else:
            del blocks["b_O"]
    if template.positional == "none":
        if np.any(top["W_pos"] != 0):
            changes["positional"] = "learned"
        else:
            del top["W_pos"]
    if template.tied_embeddings:
        if np.array_equal(top["W_U"], top["W_E"].T):
            del top["W_U"]
        else:
            changes["tied_embeddings"] = False
    return {**top, "blocks": blocks}, template.replace(**changes) if changes else template


def from_transformer_lens(state_dict: Mapping, cfg) -> tuple[Params, ModelConfig]:
    """`(params, cfg)` from a TransformerLens state dict.

    `cfg` is the model's `HookedTransformerConfig` (every bias TL stores is kept) or a
    mechjax `ModelConfig` used as a template (see the module docstring: flags turn on
    where the weights need them). Params come back as jax arrays in the config's dtype.
    Raises ValueError listing missing, unexpected or mis-shaped entries.
    """
    if isinstance(cfg, ModelConfig):
        _check_shared(cfg)
        template, tl_norm = cfg, _NORM_TO_TL[cfg.normalization]
    elif hasattr(cfg, "normalization_type") and hasattr(cfg, "d_vocab"):
        template, tl_norm = _config_from_tl(cfg), cfg.normalization_type
    else:
        raise ValueError(
            "cfg must be a transformer_lens HookedTransformerConfig or a mechjax.ModelConfig,"
            f" got {type(cfg).__name__}"
        )
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}"
            "; for a model use from_hooked_transformer(model)"
        )
    given = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in _BUFFERS}
    grouped = any(key.endswith("attn._W_K") for key in given)
    full_cfg = _full_config(template)
    entries = _layout(full_cfg, tl_norm, grouped)

    expected = {key: shape for _, _, key, shape in entries if key is not None}
    problems = [f"missing {key} {shape}" for key, shape in expected.items() if key not in given]
    problems += [f"unexpected {key}" for key in given if key not in expected]
    problems += [
        f"{key} has shape {tuple(given[key].shape)}, expected {shape}"
        for key, shape in expected.items()
        if key in given and tuple(given[key].shape) != shape
    ]
    if problems:
        raise ValueError(
            "state dict does not match the config: "
            + "; ".join(problems)
            + ". Pass the HookedTransformerConfig the weights belong to, or a ModelConfig "
            "of the same architecture."
        )

    dtype = jnp.dtype(template.dtype)
    full: dict[str, Any] = {}
    per_layer: dict[str, list] = {}
    for name, layer, key, shape in entries:
        value = to_numpy(given[key]) if key else _identity_norm(name, shape, dtype)
        value = value.astype(dtype)
        if layer is None:
            full[name] = value
        else:
            per_layer.setdefault(name, []).append(value)
    block_shapes = param_shapes(full_cfg)["blocks"]
    full["blocks"] = {
        name: np.stack(per_layer[name]) if name in per_layer else np.zeros(shape, dtype)
        for name, shape in block_shapes.items()
    }
    if full_cfg.gated_mlp and np.any(full["blocks"]["b_in"] != 0):
        raise ValueError(
            "TransformerLens gated MLP has nonzero b_in, which it adds after the product "
            "act(x W_gate) * (x W_in); mechjax adds b_in before it, so this model cannot be "
            "represented exactly"
        )

    params, out_cfg = _fit_template(full, template)
    params = {
        name: (
            {k: jnp.asarray(v) for k, v in value.items()}
            if name == "blocks"
            else jnp.asarray(value)
        )
        for name, value in params.items()
    }
    check_params(params, out_cfg)
    return params, out_cfg


def from_hooked_transformer(model) -> tuple[Params, ModelConfig]:
    """`(params, cfg)` of a `HookedTransformer` (its state dict and its config)."""
    return from_transformer_lens(model.state_dict(), model.cfg)
