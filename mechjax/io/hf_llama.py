"""The HuggingFace Llama family (Llama, Mistral, Qwen 2): `config.json` <-> `ModelConfig`
and its tensors.

- `llama_config(raw)`: a `config.json` dict -> `ModelConfig`: RMSNorm multiplying by `w`
  (no `1 + w` offset), SwiGLU, RoPE (default, linear or Llama 3 scaling), grouped-query
  attention; Llama's optional `attention_bias` (q, k, v and o) and `mlp_bias`; Qwen 2's
  q/k/v biases (o_proj has none) and optional sliding-window layers; Mistral's sliding
  window on every layer.
- `llama_config_dict(cfg)`: the dict that maps back to `cfg`, or a ValueError naming what
  of `cfg` none of the three can express. Which model type is written: `qwen2` when the
  q/k/v projections have biases and o_proj has none, `mistral` when every layer is
  sliding-window, `llama` otherwise.
- `llama_tensors(cfg)`; `LLAMA`: the family (`hf_family.HFFamily`).

Fields and defaults are those of transformers 5's `LlamaConfig`, `MistralConfig` (a
config.json without `sliding_window` gets 4096) and `Qwen2Config` (sliding windows only
with `use_sliding_window`, on the layers `layer_types` names or from `max_window_layers`
on). Older checkpoints spell RoPE as `rope_theta` / `rope_scaling`.

Tensors (`nn.Linear` `[out, in]`), under `model.layers.{i}.`:

| HF                                   | mechjax                                        |
|--------------------------------------|------------------------------------------------|
| self_attn.q_proj [head*d_head, d_model] (+ .bias) | W_Q [head, d_model, d_head] (b_Q) |
| self_attn.k_proj / v_proj (+ .bias)  | W_K / W_V [kv_head, d_model, d_head] (b_K, b_V) |
| self_attn.o_proj [d_model, head*d_head] (+ .bias) | W_O [head, d_head, d_model] (b_O) |
| input_layernorm, post_attention_layernorm | ln1_w, ln2_w                              |
| mlp.gate_proj / up_proj / down_proj (+ .bias) | W_gate / W_in / W_out, transposed (b_gate, b_in, b_out) |

plus `model.embed_tokens` -> W_E, `model.norm` -> ln_final_w and, untied, `lm_head` -> W_U.
"""

from __future__ import annotations

from ..model.config import ModelConfig
from .hf_family import (
    HFFamily,
    activation,
    check_local_rope,
    hf_activation,
    hf_rope_parameters,
    mismatches,
    refuse,
    rope_fields,
    rope_parameters,
    with_defaults,
)
from .hf_tensors import HFTensor

MODEL_TYPES = ("llama", "mistral", "qwen2")

_COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False, head_dim=None)
# the HF config classes' defaults (transformers 5) for fields a config.json may omit
_DEFAULTS = {
    "llama": dict(
        _COMMON,
        vocab_size=32_000,
        hidden_size=4096,
        intermediate_size=11_008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        max_position_embeddings=2048,
        attention_bias=False,
        mlp_bias=False,
    ),
    "mistral": dict(
        _COMMON,
        vocab_size=32_000,
        hidden_size=4096,
        intermediate_size=14_336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096 * 32,
        sliding_window=4096,
    ),
    "qwen2": dict(
        _COMMON,
        vocab_size=151_936,
        hidden_size=4096,
        intermediate_size=22_016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=32_768,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=28,
        layer_types=None,
    ),
}
_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _sliding(get, model_type: str, n_layers: int) -> tuple[tuple[str, ...] | None, int | None]:
    """(layer_types, sliding_window) as HF's attention reads them."""
    window = get("sliding_window")
    if model_type == "llama":
        return None, None
    if model_type == "mistral":  # one window on every layer, when set
        return (("local",) * n_layers, int(window)) if window else (None, None)
    if not (get("use_sliding_window") and window):  # Qwen 2: off unless asked for
        return None, None
    given = get("layer_types")
    if given is None:
        first = int(get("max_window_layers"))
        types = tuple("local" if i >= first else "global" for i in range(n_layers))
    else:
        unknown = sorted(set(given) - set(_LAYER_TYPES))
        if unknown or len(given) != n_layers:
            raise ValueError(
                f"config.json layer_types must list {n_layers} entries from "
                f"{sorted(_LAYER_TYPES)}; got {len(given)} entries, unknown {unknown}"
            )
        types = tuple(_LAYER_TYPES[t] for t in given)
    return (types, int(window)) if "local" in types else (None, None)


def llama_config(raw: dict, *, dtype: str = "float32", name: str = "") -> ModelConfig:
    """Map a HuggingFace Llama / Mistral / Qwen 2 `config.json` (as a dict) to a `ModelConfig`."""
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"config.json has model_type={model_type!r}; the Llama family reads {MODEL_TYPES}"
        )
    get = with_defaults(raw, _DEFAULTS[model_type]).get
    d_model, n_heads = int(get("hidden_size")), int(get("num_attention_heads"))
    n_layers = int(get("num_hidden_layers"))
    d_head = get("head_dim") or d_model // n_heads
    rope = rope_parameters(raw)
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(
            f"{model_type} rotates every dim of a head; partial_rotary_factor="
            f"{rope['partial_rotary_factor']} is not supported"
        )
    n_ctx = int(get("max_position_embeddings"))
    fields = rope_fields(rope, n_ctx)
    layer_types, window = _sliding(get, model_type, n_layers)
    check_local_rope(layer_types, fields)
    if model_type == "qwen2":  # q/k/v biases always, o_proj never
        biases = dict(use_attn_bias=True, use_attn_out_bias=False, use_mlp_bias=False)
    elif model_type == "mistral":
        biases = dict(use_attn_bias=False, use_mlp_bias=False)
    else:
        biases = dict(use_attn_bias=bool(get("attention_bias")), use_mlp_bias=bool(get("mlp_bias")))
    return ModelConfig(
        name=name,
        d_vocab=int(get("vocab_size")),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads") or n_heads),
        d_head=int(d_head),
        d_mlp=int(get("intermediate_size")),
        n_ctx=n_ctx,
        act_fn=activation(get("hidden_act")),
        gated_mlp=True,
        normalization="rmsnorm",
        norm_eps=float(get("rms_norm_eps")),
        positional="rope",
        **fields,
        **biases,
        tied_embeddings=bool(get("tie_word_embeddings")),
        sliding_window=window,
        layer_types=layer_types,
        dtype=dtype,
    )


def _model_type(cfg: ModelConfig, bad: list[str]) -> str:
    """The model type that represents `cfg` (appending to `bad` what none can)."""
    local = cfg.has_local_layers
    if cfg.use_attn_bias and not cfg.has_attn_out_bias:
        if cfg.use_mlp_bias:
            bad.append("use_mlp_bias=True with q/k/v-only biases (Qwen 2 has no MLP biases)")
        return "qwen2"
    if cfg.has_attn_out_bias and not cfg.use_attn_bias:
        bad.append("use_attn_out_bias=True without q/k/v biases")
    if local:
        if not all(t == "local" for t in cfg.resolved_layer_types):
            bad.append("a mix of local and global layers needs Qwen 2's q/k/v biases")
        if cfg.use_attn_bias or cfg.use_mlp_bias:
            bad.append("sliding-window layers with biases (Mistral has none)")
        return "mistral"
    return "llama"


def llama_config_dict(cfg: ModelConfig) -> dict:
    """The transformers-5 style `config.json` dict that `llama_config` maps back to `cfg`."""
    bad = mismatches(
        cfg,
        dict(
            normalization="rmsnorm",
            norm_weight_offset=0.0,
            final_norm=True,
            positional="rope",
            rope_local_base=None,
            rotary_dim=None,
            gated_mlp=True,
            parallel_attn_mlp=False,
            use_unembed_bias=False,
            scale_embeddings=False,
            attn_logit_softcap=None,
            final_logit_softcap=None,
            post_attn_norm=False,
            post_mlp_norm=False,
            qk_norm=False,
        ),
    )
    if cfg.attn_only:
        bad.append("d_mlp=None (Llama has MLPs)")
    if cfg.act_fn not in ("gelu", "gelu_tanh", "silu", "relu"):
        bad.append(f"act_fn={cfg.act_fn!r}")
    if cfg.query_pre_attn_scalar not in (None, float(cfg.d_head)):
        bad.append(f"query_pre_attn_scalar={cfg.query_pre_attn_scalar!r} (needs d_head)")
    if cfg.has_local_layers and cfg.rope_scaling != 1.0:
        bad.append("HF scales RoPE on sliding-window layers too, mechjax on global ones only")
    model_type = _model_type(cfg, bad)
    refuse(cfg, "Llama / Mistral / Qwen 2", bad)
    out = dict(
        model_type=model_type,
        architectures=[
            {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[model_type] + "ForCausalLM"
        ],
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_head,
        hidden_act=hf_activation(cfg.act_fn, "gelu_pytorch_tanh"),
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters=hf_rope_parameters(cfg),
        tie_word_embeddings=cfg.tied_embeddings,
        dtype=cfg.dtype,
    )
    if model_type == "llama":
        out.update(attention_bias=cfg.use_attn_bias, mlp_bias=cfg.use_mlp_bias)
    elif model_type == "mistral":
        out.update(sliding_window=cfg.sliding_window)
    else:
        local = cfg.has_local_layers
        kinds = {"local": "sliding_attention", "global": "full_attention"}
        out.update(
            use_sliding_window=local,
            sliding_window=cfg.sliding_window if local else None,
            layer_types=[kinds[t] for t in cfg.resolved_layer_types],
        )
    return out


def llama_tensors(cfg: ModelConfig) -> list[HFTensor]:
    """The tensors a Llama / Mistral / Qwen 2 checkpoint of this config holds."""
    attn = "self_attn."
    entries = [
        HFTensor("embed_tokens.weight", "W_E", per_layer=False),
        HFTensor("norm.weight", "ln_final_w", per_layer=False),
        HFTensor(attn + "q_proj.weight", "W_Q", "heads_in"),
        HFTensor(attn + "k_proj.weight", "W_K", "heads_in"),
        HFTensor(attn + "v_proj.weight", "W_V", "heads_in"),
        HFTensor(attn + "o_proj.weight", "W_O", "heads_out"),
        HFTensor("input_layernorm.weight", "ln1_w"),
        HFTensor("post_attention_layernorm.weight", "ln2_w"),
        HFTensor("mlp.gate_proj.weight", "W_gate", "transpose"),
        HFTensor("mlp.up_proj.weight", "W_in", "transpose"),
        HFTensor("mlp.down_proj.weight", "W_out", "transpose"),
    ]
    if cfg.use_attn_bias:
        entries += [
            HFTensor(attn + "q_proj.bias", "b_Q", "heads_bias"),
            HFTensor(attn + "k_proj.bias", "b_K", "heads_bias"),
            HFTensor(attn + "v_proj.bias", "b_V", "heads_bias"),
        ]
    if cfg.has_attn_out_bias:
        entries.append(HFTensor(attn + "o_proj.bias", "b_O"))
    if cfg.use_mlp_bias:
        entries += [
            HFTensor("mlp.gate_proj.bias", "b_gate"),
            HFTensor("mlp.up_proj.bias", "b_in"),
            HFTensor("mlp.down_proj.bias", "b_out"),
        ]
    if not cfg.tied_embeddings:
        entries.append(HFTensor("lm_head.weight", "W_U", "transpose", False, lm_head=True))
    return entries


LLAMA = HFFamily(
    name="Llama",
    model_types=MODEL_TYPES,
    config=llama_config,
    config_dict=llama_config_dict,
    tensors=llama_tensors,
    embedding="embed_tokens.weight",
    body_prefixes=("model.", ""),
    layer="layers.{i}.",
    head_names=("lm_head.weight",),
    ignored=("rotary_emb.inv_freq",),
)
