"""The HuggingFace Gemma 1 / 2 / 3 family: `config.json` <-> `ModelConfig` and its tensors.

- `gemma_config(raw)`: a `config.json` dict -> `ModelConfig`.
- `gemma_config_dict(cfg)`: the transformers-5 style dict that maps back to `cfg`, or a
  ValueError naming what of `cfg` no HF Gemma family can represent.
- `gemma_tensors(cfg)`: the checkpoint's tensors; `GEMMA`: the family (`hf_family.HFFamily`).

The config fields and their defaults (used when a field is absent, as HF does) are those of
transformers 5.23's `GemmaConfig`, `Gemma2Config` and `Gemma3TextConfig`; older
checkpoints spell RoPE as `rope_theta` / `rope_local_base_freq` / `rope_scaling` and leave
out `layer_types`, which then follow the model type (Gemma 2: even layers sliding-window;
Gemma 3: every `sliding_window_pattern`-th layer global). A multimodal `gemma3` config
contributes its language model only (`text_config`; weights under `language_model.`).

Tensors (HF `nn.Linear` stores `[out, in]`; layouts in `hf_tensors`):

| HF (under `model.layers.{i}.`)     | mechjax (`blocks`, stacked on `layer`)               |
|------------------------------------|------------------------------------------------------|
| self_attn.q_proj [head*d_head, d_model] | W_Q [head, d_model, d_head]                     |
| self_attn.k_proj / v_proj          | W_K / W_V [kv_head, d_model, d_head]                 |
| self_attn.o_proj [d_model, head*d_head] | W_O [head, d_head, d_model]                     |
| self_attn.q_norm / k_norm          | q_norm_w / k_norm_w [d_head]            (Gemma 3)    |
| input_layernorm                    | ln1_w                                                |
| post_attention_layernorm           | ln1_post_w (Gemma 2/3); ln2_w, the pre-MLP norm (Gemma 1) |
| pre_feedforward_layernorm          | ln2_w                                   (Gemma 2/3)  |
| post_feedforward_layernorm         | ln2_post_w                              (Gemma 2/3)  |
| mlp.gate_proj / up_proj / down_proj | W_gate (activated) / W_in (linear) / W_out, transposed |

plus `model.embed_tokens` -> W_E, `model.norm` -> ln_final_w and, for untied embeddings,
`lm_head` [vocab, d_model] -> W_U [d_model, vocab]. Gemma's RMSNorm multiplies by
`1 + w` and checkpoints store `w`; mechjax keeps `w` with `norm_weight_offset=1`.
"""

from __future__ import annotations

from ..model.config import ModelConfig
from .hf_family import HFFamily, mismatches, refuse
from .hf_tensors import HFTensor

TEXT_MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")
MODEL_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")

# Defaults of the HF config classes (transformers 5.23) for fields a config.json may omit.
_GEMMA2_DEFAULTS = dict(
    vocab_size=256_000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
)
_DEFAULTS = {
    "gemma": dict(
        vocab_size=256_000,
        hidden_size=3072,
        intermediate_size=24_576,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=256,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
    ),
    "gemma2": _GEMMA2_DEFAULTS,
    # Gemma3TextConfig: Gemma2Config's defaults but for the vocabulary, context and soft-caps
    "gemma3_text": {
        **_GEMMA2_DEFAULTS,
        "vocab_size": 262_208,
        "max_position_embeddings": 131_072,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
    },
}
_DEFAULT_ROPE_THETA = {"gemma": 10_000.0, "gemma2": 10_000.0, "gemma3_text": 1_000_000.0}
_GEMMA3_LOCAL_THETA = 10_000.0
_GEMMA3_PATTERN = 6  # Gemma 3: layers 6, 12, ... are global

_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}
_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


# -- config.json -> ModelConfig --------------------------------------------------------------


def _text_config(raw: dict) -> tuple[dict, str]:
    """The language model's config dict and its model type (unwrapping multimodal Gemma 3)."""
    model_type = raw.get("model_type")
    if model_type == "gemma3":
        text = dict(raw.get("text_config") or {})
        text.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", True))
        return text, "gemma3_text"
    if model_type not in TEXT_MODEL_TYPES:
        raise ValueError(
            f"config.json has model_type={model_type!r}; the Gemma family reads {MODEL_TYPES}"
        )
    return raw, model_type


def _activation(text: dict, model_type: str) -> str:
    if model_type == "gemma":
        # HF: `hidden_activation` when set; otherwise `hidden_act`, where the legacy "gelu"
        # of the first Gemma releases means the tanh approximation.
        name = text.get("hidden_activation") or text.get("hidden_act") or "gelu_pytorch_tanh"
        name = "gelu_pytorch_tanh" if name == "gelu" and not text.get("hidden_activation") else name
    else:
        name = text.get("hidden_activation") or "gelu_pytorch_tanh"
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"hidden activation {name!r} is not supported; mechjax runs {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _layer_types(text: dict, model_type: str, n_layers: int) -> tuple[str, ...] | None:
    if model_type == "gemma":
        return None
    given = text.get("layer_types")
    if given is not None:
        unknown = sorted(set(given) - set(_LAYER_TYPES))
        if unknown or len(given) != n_layers:
            raise ValueError(
                f"config.json layer_types must list {n_layers} entries from "
                f"{sorted(_LAYER_TYPES)}; got {len(given)} entries, unknown {unknown}"
            )
        return tuple(_LAYER_TYPES[t] for t in given)
    if model_type == "gemma2":  # HF: sliding when (i + 1) is odd
        return tuple("local" if (i + 1) % 2 else "global" for i in range(n_layers))
    pattern = text.get("sliding_window_pattern") or text.get("_sliding_window_pattern")
    pattern = int(pattern or _GEMMA3_PATTERN)
    return tuple("local" if (i + 1) % pattern else "global" for i in range(n_layers))


def _rope_factor(params: dict, which: str) -> tuple[float, float]:
    """(theta, linear factor) of one RoPE parameter dict; other RoPE types are refused."""
    kind = params.get("rope_type", params.get("type", "default"))
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(f"{which} RoPE: partial_rotary_factor != 1 is not supported")
    if kind == "default":
        factor = 1.0
    elif kind == "linear":
        factor = float(params["factor"])
    else:
        raise ValueError(
            f"{which} RoPE has rope_type={kind!r}; mechjax implements 'default' and 'linear'"
        )
    return float(params["rope_theta"]), factor


def _rope(text: dict, model_type: str, layer_types) -> dict:
    """rope_base / rope_local_base / rope_scaling from either spelling of the RoPE fields."""
    params = text.get("rope_parameters") or {}
    if set(params) & set(_LAYER_TYPES):  # transformers 5: one dict per layer type
        full = dict(params.get("full_attention") or {})
        sliding = dict(params.get("sliding_attention") or {})
        full.setdefault("rope_theta", _DEFAULT_ROPE_THETA[model_type])
        sliding.setdefault(
            "rope_theta",
            _GEMMA3_LOCAL_THETA if model_type == "gemma3_text" else full["rope_theta"],
        )
    else:
        single = dict(params or text.get("rope_scaling") or {})
        theta = text.get("rope_theta", _DEFAULT_ROPE_THETA[model_type])
        full = {"rope_theta": theta, **single}
        if model_type == "gemma3_text":  # rope_scaling only ever scaled the global layers
            sliding = {"rope_theta": text.get("rope_local_base_freq", _GEMMA3_LOCAL_THETA)}
        else:
            sliding = full
    base, scaling = _rope_factor(full, "full_attention")
    local_base, local_scaling = _rope_factor(sliding, "sliding_attention")
    has_local = layer_types is not None and "local" in layer_types
    if has_local and local_scaling != 1.0:
        raise ValueError(
            "scaled RoPE on sliding-window layers is not supported (mechjax scales the "
            "global layers only)"
        )
    # ModelConfig: local layers use rope_local_base (rope_base when None), unscaled; name
    # it explicitly whenever global layers are scaled, so the local tables never rest on
    # that fallback
    same = local_base == base and scaling == 1.0
    return dict(
        rope_base=base,
        rope_scaling=scaling,
        rope_local_base=None if (not has_local or same) else local_base,
    )


def gemma_config(raw: dict, *, dtype: str = "float32", name: str = "") -> ModelConfig:
    """Map a HuggingFace Gemma `config.json` (as a dict) to a `ModelConfig`."""
    text, model_type = _text_config(raw)
    if text.get("use_bidirectional_attention"):
        raise ValueError(
            "use_bidirectional_attention=True (an encoder) is not supported; mechjax is causal"
        )
    get = {**_DEFAULTS[model_type], **text}.get
    n_layers = int(get("num_hidden_layers"))
    n_heads = int(get("num_attention_heads"))
    d_mlp = get("intermediate_size")
    if not isinstance(d_mlp, int):
        raise ValueError(f"intermediate_size must be one integer, got {d_mlp!r}")
    layer_types = _layer_types(text, model_type, n_layers)
    has_local = layer_types is not None and "local" in layer_types
    later = model_type != "gemma"  # Gemma 2 and 3 share scalars, soft-caps and post-norms
    sliding_window = get("sliding_window") if later else None
    if has_local and not sliding_window:
        raise ValueError("config.json has sliding_attention layers but no sliding_window")

    def optional_float(key):
        value = get(key) if later else None
        return None if value is None else float(value)

    return ModelConfig(
        name=name,
        d_vocab=int(get("vocab_size")),
        d_model=int(get("hidden_size")),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads") or n_heads),
        d_head=int(get("head_dim") or int(get("hidden_size")) // n_heads),
        d_mlp=d_mlp,
        n_ctx=int(get("max_position_embeddings")),
        act_fn=_activation(text, model_type),
        gated_mlp=True,
        normalization="rmsnorm",
        norm_eps=float(get("rms_norm_eps")),
        norm_weight_offset=1.0,
        positional="rope",
        **_rope(text, model_type, layer_types),
        use_attn_bias=bool(get("attention_bias", False)),
        scale_embeddings=True,
        tied_embeddings=bool(get("tie_word_embeddings", True)),
        query_pre_attn_scalar=optional_float("query_pre_attn_scalar"),
        attn_logit_softcap=optional_float("attn_logit_softcapping"),
        final_logit_softcap=optional_float("final_logit_softcapping"),
        sliding_window=int(sliding_window) if sliding_window else None,
        layer_types=layer_types,
        post_attn_norm=later,
        post_mlp_norm=later,
        qk_norm=model_type == "gemma3_text",
        dtype=dtype,
    )


# -- ModelConfig -> config.json --------------------------------------------------------------


def _model_type(cfg: ModelConfig) -> str:
    """The HF family that represents `cfg` exactly, or a ValueError naming what does not fit."""
    model_type = "gemma3_text" if cfg.qk_norm else "gemma2" if cfg.post_attn_norm else "gemma"
    wanted = dict(
        normalization="rmsnorm",
        norm_weight_offset=1.0,
        final_norm=True,
        positional="rope",
        gated_mlp=True,
        scale_embeddings=True,
        use_mlp_bias=False,
        use_unembed_bias=False,
        parallel_attn_mlp=False,
        rotary_dim=None,
        post_mlp_norm=cfg.post_attn_norm,
    )
    bad = mismatches(cfg, wanted)
    if cfg.has_attn_out_bias != cfg.use_attn_bias:  # HF's attention_bias covers o_proj too
        bad.append("use_attn_out_bias differs from use_attn_bias")
    if cfg.rope_scaling_type != "linear" and cfg.rope_scaling != 1.0:
        bad.append(f"rope_scaling_type={cfg.rope_scaling_type!r} (Gemma scales linearly)")
    if cfg.attn_only:
        bad.append("d_mlp=None (Gemma has MLPs)")
    if cfg.act_fn not in ("gelu_tanh", "gelu") or (
        model_type == "gemma" and cfg.act_fn != "gelu_tanh"
    ):
        bad.append(f"act_fn={cfg.act_fn!r}")
    if model_type == "gemma":
        if cfg.has_local_layers or cfg.attn_logit_softcap or cfg.final_logit_softcap:
            bad.append("local layers / soft-caps need post norms (Gemma 2/3)")
        if cfg.query_pre_attn_scalar not in (None, cfg.d_head):
            bad.append("query_pre_attn_scalar needs Gemma 2/3")
    if model_type != "gemma3_text" and cfg.rope_local_base is not None:
        bad.append("rope_local_base needs Gemma 3 (qk_norm=True)")
    if model_type == "gemma2" and cfg.has_local_layers and cfg.rope_scaling != 1.0:
        bad.append("HF Gemma 2 scales RoPE on every layer, mechjax on global ones only")
    refuse(cfg, "Gemma", bad)
    return model_type


def _int_if_whole(x: float) -> int | float:
    """HF declares query_pre_attn_scalar an int and validates types strictly."""
    return int(x) if float(x).is_integer() else float(x)


def gemma_config_dict(cfg: ModelConfig) -> dict:
    """The transformers-5 style `config.json` dict that `gemma_config` maps back to `cfg`."""
    model_type = _model_type(cfg)
    scaled = {"rope_type": "linear", "factor": cfg.rope_scaling} if cfg.rope_scaling != 1.0 else {}
    full = {"rope_type": "default", "rope_theta": cfg.rope_base, **scaled}
    out = dict(
        model_type=model_type,
        architectures=[
            {"gemma": "Gemma", "gemma2": "Gemma2", "gemma3_text": "Gemma3"}[model_type]
            + "ForCausalLM"
        ],
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_head,
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.norm_eps,
        attention_bias=cfg.use_attn_bias,
        tie_word_embeddings=cfg.tied_embeddings,
        dtype=cfg.dtype,
    )
    act = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.act_fn]
    if model_type == "gemma":
        out.update(hidden_act=act, rope_parameters=full)
        return out
    types = [
        {"local": "sliding_attention", "global": "full_attention"}[t]
        for t in cfg.resolved_layer_types
    ]
    out.update(
        hidden_activation=act,
        query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.d_head),
        attn_logit_softcapping=cfg.attn_logit_softcap,
        final_logit_softcapping=cfg.final_logit_softcap,
        sliding_window=cfg.sliding_window,
        layer_types=types,
    )
    if model_type == "gemma2":
        out["rope_parameters"] = full
    else:
        local = {"rope_type": "default", "rope_theta": cfg.rope_local_base or cfg.rope_base}
        out["rope_parameters"] = {"full_attention": full, "sliding_attention": local}
    return out


# -- tensors ----------------------------------------------------------------------------------


def gemma_tensors(cfg: ModelConfig) -> list[HFTensor]:
    """The tensors a Gemma checkpoint of this config holds (one entry per kind)."""
    attn = "self_attn."
    entries = [
        HFTensor("embed_tokens.weight", "W_E", per_layer=False),
        HFTensor("norm.weight", "ln_final_w", per_layer=False),
        HFTensor(attn + "q_proj.weight", "W_Q", "heads_in"),
        HFTensor(attn + "k_proj.weight", "W_K", "heads_in"),
        HFTensor(attn + "v_proj.weight", "W_V", "heads_in"),
        HFTensor(attn + "o_proj.weight", "W_O", "heads_out"),
        HFTensor("input_layernorm.weight", "ln1_w"),
        HFTensor("mlp.gate_proj.weight", "W_gate", "transpose"),
        HFTensor("mlp.up_proj.weight", "W_in", "transpose"),
        HFTensor("mlp.down_proj.weight", "W_out", "transpose"),
    ]
    if not cfg.tied_embeddings:
        entries.append(HFTensor("lm_head.weight", "W_U", "transpose", False, lm_head=True))
    if cfg.use_attn_bias:
        entries += [
            HFTensor(attn + "q_proj.bias", "b_Q", "heads_bias"),
            HFTensor(attn + "k_proj.bias", "b_K", "heads_bias"),
            HFTensor(attn + "v_proj.bias", "b_V", "heads_bias"),
            HFTensor(attn + "o_proj.bias", "b_O"),
        ]
    if cfg.qk_norm:
        entries += [
            HFTensor(attn + "q_norm.weight", "q_norm_w"),
            HFTensor(attn + "k_norm.weight", "k_norm_w"),
        ]
    if cfg.post_attn_norm:  # Gemma 2/3 naming
        entries += [
            HFTensor("post_attention_layernorm.weight", "ln1_post_w"),
            HFTensor("pre_feedforward_layernorm.weight", "ln2_w"),
        ]
    else:  # Gemma 1: "post_attention_layernorm" is the norm before the MLP
        entries.append(HFTensor("post_attention_layernorm.weight", "ln2_w"))
    if cfg.post_mlp_norm:
        entries.append(HFTensor("post_feedforward_layernorm.weight", "ln2_post_w"))
    return entries


GEMMA = HFFamily(
    name="Gemma",
    model_types=MODEL_TYPES,
    config=gemma_config,
    config_dict=gemma_config_dict,
    tensors=gemma_tensors,
    embedding="embed_tokens.weight",
    body_prefixes=("model.", "language_model.model.", "model.language_model.", ""),
    layer="layers.{i}.",
    head_names=("lm_head.weight", "language_model.lm_head.weight"),
    ignored=("rotary_emb.inv_freq", "vision_tower.", "multi_modal_projector."),
)
