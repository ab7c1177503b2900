"""The HuggingFace GPT-NeoX family (Pythia): `config.json` <-> `ModelConfig` and its tensors.

- `gpt_neox_config(raw)`: a `config.json` dict -> `ModelConfig`: LayerNorm, attention and
  MLP in parallel (`use_parallel_residual`; the MLP reads `post_attention_layernorm` of
  the block's input), rotary embeddings on the first `int(d_head * rotary_pct)` dims of
  each head, biases (`attention_bias`; the MLP's always), an untied unembedding.
- `gpt_neox_config_dict(cfg)`: the dict that maps back to `cfg`, or a ValueError naming
  what of `cfg` GPT-NeoX cannot express.
- `gpt_neox_tensors(cfg)`; `GPT_NEOX`: the family (`hf_family.HFFamily`).

Fields and defaults are those of transformers 5's `GPTNeoXConfig`; older checkpoints
(Pythia's) spell RoPE as `rotary_pct` / `rotary_emb_base` / `rope_scaling`.

Tensors (`nn.Linear` `[out, in]`), under `gpt_neox.layers.{i}.`:

| HF                                   | mechjax                                        |
|--------------------------------------|------------------------------------------------|
| attention.query_key_value.weight [3*d_model, d_model] | W_Q, W_K, W_V [head, d_model, d_head]: rows per head, q, k, v |
| attention.query_key_value.bias [3*d_model] | b_Q, b_K, b_V [head, d_head]             |
| attention.dense.weight, .bias        | W_O [head, d_head, d_model], b_O               |
| input_layernorm, post_attention_layernorm | ln1_w/_b, ln2_w/_b                        |
| mlp.dense_h_to_4h, mlp.dense_4h_to_h | W_in/b_in, W_out/b_out (transposed)            |

plus `gpt_neox.embed_in` -> W_E, `gpt_neox.final_layer_norm` -> ln_final_w/_b and
`embed_out` (transformers 5 loads it as `lm_head`; both spellings are read) -> W_U.
Buffers (`attention.bias`, `attention.masked_bias`, `rotary_emb.inv_freq`) are ignored.
"""

from __future__ import annotations

from ..model.config import ModelConfig
from .hf_family import (
    HFFamily,
    activation,
    hf_activation,
    hf_rope_parameters,
    mismatches,
    refuse,
    rope_fields,
    rope_parameters,
    with_defaults,
)
from .hf_tensors import HFTensor

MODEL_TYPES = ("gpt_neox",)

# GPTNeoXConfig's defaults (transformers 5) for fields a config.json may omit
_DEFAULTS = dict(
    vocab_size=50432,
    hidden_size=6144,
    num_hidden_layers=44,
    num_attention_heads=64,
    intermediate_size=24576,
    hidden_act="gelu",
    max_position_embeddings=2048,
    layer_norm_eps=1e-5,
    tie_word_embeddings=False,
    use_parallel_residual=True,
    attention_bias=True,
)
_ROTARY_PCT = 0.25  # GPTNeoXConfig's default partial_rotary_factor (rotary_pct)


def gpt_neox_config(raw: dict, *, dtype: str = "float32", name: str = "") -> ModelConfig:
    """Map a HuggingFace GPT-NeoX `config.json` (as a dict) to a `ModelConfig`."""
    get = with_defaults(raw, _DEFAULTS).get
    d_model, n_heads = int(get("hidden_size")), int(get("num_attention_heads"))
    if d_model % n_heads:
        raise ValueError(f"hidden_size={d_model} is not divisible by num_attention_heads={n_heads}")
    d_head = d_model // n_heads
    # HF: rope_scaling (older) or rope_parameters, theta from rotary_emb_base, the rotated
    # fraction from rotary_pct when the dict lacks them
    rope = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
    rope.setdefault("rope_theta", raw.get("rotary_emb_base", raw.get("rope_theta", 10_000.0)))
    rope.setdefault(
        "partial_rotary_factor",
        raw.get("rotary_pct", raw.get("partial_rotary_factor", _ROTARY_PCT)),
    )
    rope = rope_parameters({"rope_parameters": rope})
    fraction = float(rope["partial_rotary_factor"])
    rotary_dim = int(d_head * fraction)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(
            f"rotary_pct={fraction} rotates {rotary_dim} of {d_head} dims per head; RoPE "
            "needs a positive even number"
        )
    n_ctx = int(get("max_position_embeddings"))
    return ModelConfig(
        name=name,
        d_vocab=int(get("vocab_size")),
        d_model=d_model,
        n_layers=int(get("num_hidden_layers")),
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=int(get("intermediate_size")),
        n_ctx=n_ctx,
        act_fn=activation(get("hidden_act")),
        parallel_attn_mlp=bool(get("use_parallel_residual")),
        normalization="layernorm",
        norm_eps=float(get("layer_norm_eps")),
        positional="rope",
        rotary_dim=None if rotary_dim == d_head else rotary_dim,
        **rope_fields(rope, n_ctx),
        use_attn_bias=bool(get("attention_bias")),
        use_mlp_bias=True,
        tied_embeddings=bool(get("tie_word_embeddings")),
        dtype=dtype,
    )


def gpt_neox_config_dict(cfg: ModelConfig) -> dict:
    """The transformers-5 style `config.json` dict that `gpt_neox_config` maps back to `cfg`."""
    bad = mismatches(
        cfg,
        dict(
            normalization="layernorm",
            norm_weight_offset=0.0,
            final_norm=True,
            positional="rope",
            rope_local_base=None,
            gated_mlp=False,
            use_mlp_bias=True,
            use_unembed_bias=False,
            scale_embeddings=False,
            n_kv_heads=cfg.n_heads,
            d_model=cfg.n_heads * cfg.d_head,
            attn_logit_softcap=None,
            final_logit_softcap=None,
            layer_types=None,
            sliding_window=None,
            post_attn_norm=False,
            post_mlp_norm=False,
            qk_norm=False,
        ),
    )
    if cfg.has_attn_out_bias != cfg.use_attn_bias:
        bad.append("use_attn_out_bias differs from use_attn_bias (one attention_bias in HF)")
    if cfg.attn_only:
        bad.append("d_mlp=None (GPT-NeoX has MLPs)")
    if cfg.act_fn not in ("gelu", "gelu_tanh", "silu", "relu"):
        bad.append(f"act_fn={cfg.act_fn!r}")
    if cfg.query_pre_attn_scalar not in (None, float(cfg.d_head)):
        bad.append(f"query_pre_attn_scalar={cfg.query_pre_attn_scalar!r} (needs d_head)")
    fraction = cfg.rope_dim / cfg.d_head
    if int(cfg.d_head * fraction) != cfg.rope_dim:
        bad.append(f"rotary_dim={cfg.rotary_dim} is not int(d_head * a float fraction)")
    refuse(cfg, "GPT-NeoX", bad)
    return dict(
        model_type="gpt_neox",
        architectures=["GPTNeoXForCausalLM"],
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp,
        hidden_act=hf_activation(cfg.act_fn, "gelu_new"),
        max_position_embeddings=cfg.n_ctx,
        layer_norm_eps=cfg.norm_eps,
        use_parallel_residual=cfg.parallel_attn_mlp,
        attention_bias=cfg.use_attn_bias,
        rope_parameters={**hf_rope_parameters(cfg), "partial_rotary_factor": fraction},
        tie_word_embeddings=cfg.tied_embeddings,
        dtype=cfg.dtype,
    )


def gpt_neox_tensors(cfg: ModelConfig) -> list[HFTensor]:
    """The tensors a GPT-NeoX checkpoint of this config holds (one entry per kind)."""
    attn = "attention."
    entries = [
        HFTensor("embed_in.weight", "W_E", per_layer=False),
        HFTensor("final_layer_norm.weight", "ln_final_w", per_layer=False),
        HFTensor("final_layer_norm.bias", "ln_final_b", per_layer=False),
        HFTensor("input_layernorm.weight", "ln1_w"),
        HFTensor("input_layernorm.bias", "ln1_b"),
        HFTensor(attn + "query_key_value.weight", ("W_Q", "W_K", "W_V"), "neox_qkv"),
        HFTensor(attn + "dense.weight", "W_O", "heads_out"),
        HFTensor("post_attention_layernorm.weight", "ln2_w"),
        HFTensor("post_attention_layernorm.bias", "ln2_b"),
        HFTensor("mlp.dense_h_to_4h.weight", "W_in", "transpose"),
        HFTensor("mlp.dense_h_to_4h.bias", "b_in"),
        HFTensor("mlp.dense_4h_to_h.weight", "W_out", "transpose"),
        HFTensor("mlp.dense_4h_to_h.bias", "b_out"),
    ]
    if cfg.use_attn_bias:
        entries += [
            HFTensor(attn + "query_key_value.bias", ("b_Q", "b_K", "b_V"), "neox_qkv_bias"),
            HFTensor(attn + "dense.bias", "b_O"),
        ]
    if not cfg.tied_embeddings:
        entries.append(HFTensor("embed_out.weight", "W_U", "transpose", False, lm_head=True))
    return entries


GPT_NEOX = HFFamily(
    name="GPT-NeoX",
    model_types=MODEL_TYPES,
    config=gpt_neox_config,
    config_dict=gpt_neox_config_dict,
    tensors=gpt_neox_tensors,
    embedding="embed_in.weight",
    body_prefixes=("gpt_neox.", ""),
    layer="layers.{i}.",
    head_names=("embed_out.weight", "lm_head.weight"),
    ignored=("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq"),
)
