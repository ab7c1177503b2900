"""The HuggingFace GPT-2 family: `config.json` <-> `ModelConfig` and its tensors.

- `gpt2_config(raw)`: a `config.json` dict -> `ModelConfig`: pre-LayerNorm blocks,
  learned positions, biases everywhere, GELU (HF "gelu_new" is the tanh approximation),
  tied unembedding unless `tie_word_embeddings` is false.
- `gpt2_config_dict(cfg)`: the dict that maps back to `cfg`, or a ValueError naming what
  of `cfg` GPT-2 cannot express.
- `gpt2_tensors(cfg)`; `GPT2`: the family (`hf_family.HFFamily`).

Fields and defaults are those of transformers 5's `GPT2Config` (the defaults are GPT-2
small's); the `hidden_size` / `num_attention_heads` ... aliases are read too.
`scale_attn_weights=False` (scores not divided by sqrt(d_head)) maps to
`query_pre_attn_scalar=1`; `scale_attn_by_inverse_layer_idx` and cross-attention are
refused; `reorder_and_upcast_attn` only changes the precision of half-precision training.

GPT-2's `Conv1D` stores `[in, out]` (ours already), under `transformer.h.{i}.` (or no
prefix, as in the original `gpt2` checkpoint):

| HF                                   | mechjax                                        |
|--------------------------------------|------------------------------------------------|
| attn.c_attn.weight [d_model, 3*d_model] | W_Q, W_K, W_V [head, d_model, d_head], columns q, k, v |
| attn.c_attn.bias [3*d_model]         | b_Q, b_K, b_V [head, d_head]                   |
| attn.c_proj.weight [d_model, d_model], .bias | W_O [head, d_head, d_model], b_O       |
| ln_1, ln_2 (.weight, .bias)          | ln1_w/_b, ln2_w/_b                             |
| mlp.c_fc, mlp.c_proj (.weight, .bias) | W_in/b_in, W_out/b_out                        |

plus `wte` -> W_E, `wpe` -> W_pos, `ln_f` -> ln_final_w/_b and, untied, `lm_head` ->
W_U. The causal-mask buffers `attn.bias` / `attn.masked_bias` are ignored.
"""

from __future__ import annotations

from ..model.config import ModelConfig
from .hf_family import HFFamily, activation, hf_activation, mismatches, refuse, with_defaults
from .hf_tensors import HFTensor

MODEL_TYPES = ("gpt2",)

# GPT2Config's defaults (transformers 5) for fields a config.json may omit
_DEFAULTS = dict(
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_inner=None,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False,
    add_cross_attention=False,
    tie_word_embeddings=True,
)
_ALIASES = {  # GPT2Config.attribute_map
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


def gpt2_config(raw: dict, *, dtype: str = "float32", name: str = "") -> ModelConfig:
    """Map a HuggingFace GPT-2 `config.json` (as a dict) to a `ModelConfig`."""
    raw = {**{ours: raw[alias] for alias, ours in _ALIASES.items() if alias in raw}, **raw}
    get = with_defaults(raw, _DEFAULTS).get
    if get("scale_attn_by_inverse_layer_idx"):
        raise ValueError(
            "scale_attn_by_inverse_layer_idx=True (scores divided by the layer index + 1, "
            "as in some Mistral-trained GPT-2s) is not supported"
        )
    if get("add_cross_attention"):
        raise ValueError("add_cross_attention=True (an encoder-decoder block) is not supported")
    d_model, n_heads = int(get("n_embd")), int(get("n_head"))
    if d_model % n_heads:
        raise ValueError(f"n_embd={d_model} is not divisible by n_head={n_heads}")
    return ModelConfig(
        name=name,
        d_vocab=int(get("vocab_size")),
        d_model=d_model,
        n_layers=int(get("n_layer")),
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=int(get("n_inner") or 4 * d_model),
        n_ctx=int(get("n_positions")),
        act_fn=activation(get("activation_function")),
        normalization="layernorm",
        norm_eps=float(get("layer_norm_epsilon")),
        positional="learned",
        use_attn_bias=True,
        use_mlp_bias=True,
        tied_embeddings=bool(get("tie_word_embeddings")),
        query_pre_attn_scalar=None if get("scale_attn_weights") else 1.0,
        dtype=dtype,
    )


def gpt2_config_dict(cfg: ModelConfig) -> dict:
    """The `config.json` dict that `gpt2_config` maps back to `cfg`."""
    bad = mismatches(
        cfg,
        dict(
            normalization="layernorm",
            norm_weight_offset=0.0,
            final_norm=True,
            positional="learned",
            gated_mlp=False,
            parallel_attn_mlp=False,
            use_attn_bias=True,
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
    if not cfg.has_attn_out_bias:
        bad.append("use_attn_out_bias=False (GPT-2's c_proj has a bias)")
    if cfg.attn_only:
        bad.append("d_mlp=None (GPT-2 has MLPs)")
    if cfg.act_fn not in ("gelu", "gelu_tanh", "silu", "relu"):
        bad.append(f"act_fn={cfg.act_fn!r}")
    if cfg.query_pre_attn_scalar not in (None, float(cfg.d_head), 1.0):
        bad.append(f"query_pre_attn_scalar={cfg.query_pre_attn_scalar!r} (needs d_head or 1)")
    refuse(cfg, "GPT-2", bad)
    # GPT2Config's default bos/eos id (50256) only where the vocabulary has it
    no_ids = {} if cfg.d_vocab > 50256 else dict(bos_token_id=None, eos_token_id=None)
    return dict(
        **no_ids,
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=cfg.d_vocab,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        n_positions=cfg.n_ctx,
        activation_function=hf_activation(cfg.act_fn, "gelu_new"),
        layer_norm_epsilon=cfg.norm_eps,
        scale_attn_weights=cfg.query_pre_attn_scalar != 1.0,
        tie_word_embeddings=cfg.tied_embeddings,
        dtype=cfg.dtype,
    )


def gpt2_tensors(cfg: ModelConfig) -> list[HFTensor]:
    """The tensors a GPT-2 checkpoint of this config holds (one entry per kind)."""
    entries = [
        HFTensor("wte.weight", "W_E", per_layer=False),
        HFTensor("wpe.weight", "W_pos", per_layer=False),
        HFTensor("ln_f.weight", "ln_final_w", per_layer=False),
        HFTensor("ln_f.bias", "ln_final_b", per_layer=False),
        HFTensor("ln_1.weight", "ln1_w"),
        HFTensor("ln_1.bias", "ln1_b"),
        HFTensor("attn.c_attn.weight", ("W_Q", "W_K", "W_V"), "conv1d_qkv"),
        HFTensor("attn.c_attn.bias", ("b_Q", "b_K", "b_V"), "qkv_bias"),
        HFTensor("attn.c_proj.weight", "W_O", "heads_rows"),
        HFTensor("attn.c_proj.bias", "b_O"),
        HFTensor("ln_2.weight", "ln2_w"),
        HFTensor("ln_2.bias", "ln2_b"),
        HFTensor("mlp.c_fc.weight", "W_in"),
        HFTensor("mlp.c_fc.bias", "b_in"),
        HFTensor("mlp.c_proj.weight", "W_out"),
        HFTensor("mlp.c_proj.bias", "b_out"),
    ]
    if not cfg.tied_embeddings:
        entries.append(HFTensor("lm_head.weight", "W_U", "transpose", False, lm_head=True))
    return entries


GPT2 = HFFamily(
    name="GPT-2",
    model_types=MODEL_TYPES,
    config=gpt2_config,
    config_dict=gpt2_config_dict,
    tensors=gpt2_tensors,
    embedding="wte.weight",
    body_prefixes=("transformer.", ""),
    layer="h.{i}.",
    head_names=("lm_head.weight",),
    ignored=("attn.bias", "attn.masked_bias"),
)
