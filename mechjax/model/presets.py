"""Configurations with the published sizes of Gemma models, and attention-only toys.

Sizes are from the models' released `config.json` files (HuggingFace) and the Gemma
technical reports; the architectural switches follow `ModelConfig`'s docstring.
"""

from __future__ import annotations

from .config import ModelConfig

_GEMMA_COMMON = dict(
    act_fn="gelu_tanh",
    gated_mlp=True,
    normalization="rmsnorm",
    norm_eps=1e-6,
    norm_weight_offset=1.0,
    positional="rope",
    scale_embeddings=True,
    tied_embeddings=True,
)


def gemma_2b() -> ModelConfig:
    """Gemma 1 2B: multi-query attention, 18 layers, all global."""
    return ModelConfig(
        name="gemma-2b",
        d_vocab=256_000,
        d_model=2048,
        n_layers=18,
        n_heads=8,
        n_kv_heads=1,
        d_head=256,
        d_mlp=16_384,
        n_ctx=8192,
        **_GEMMA_COMMON,
    )


def _gemma2(name, d_model, n_layers, n_heads, n_kv_heads, d_mlp, query_pre_attn_scalar):
    return ModelConfig(
        name=name,
        d_vocab=256_000,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=256,
        d_mlp=d_mlp,
        n_ctx=8192,
        query_pre_attn_scalar=query_pre_attn_scalar,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=4096,
        # HF Gemma 2: layer i is sliding-window when (i + 1) is odd, i.e. even i.
        layer_types=tuple("local" if i % 2 == 0 else "global" for i in range(n_layers)),
        post_attn_norm=True,
        post_mlp_norm=True,
        **_GEMMA_COMMON,
    )


def gemma2_2b() -> ModelConfig:
    return _gemma2("gemma-2-2b", 2304, 26, 8, 4, 9216, 256.0)


def gemma2_9b() -> ModelConfig:
    return _gemma2("gemma-2-9b", 3584, 42, 16, 8, 14_336, 256.0)


def gemma3_1b() -> ModelConfig:
    """Gemma 3 1B (text): 5 local layers then 1 global, q/k norms, two RoPE bases."""
    n_layers = 26
    return ModelConfig(
        name="gemma-3-1b",
        d_vocab=262_144,
        d_model=1152,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=1,
        d_head=256,
        d_mlp=6912,
        n_ctx=32_768,
        query_pre_attn_scalar=256.0,
        sliding_window=512,
        rope_base=1_000_000.0,
        rope_local_base=10_000.0,
        layer_types=tuple("global" if (i + 1) % 6 == 0 else "local" for i in range(n_layers)),
        post_attn_norm=True,
        post_mlp_norm=True,
        qk_norm=True,
        **_GEMMA_COMMON,
    )


def attn_only(
    n_layers: int = 2,
    *,
    d_model: int = 64,
    n_heads: int = 8,
    d_head: int | None = None,
    d_vocab: int = 64,
    n_ctx: int = 64,
    normalization: str = "layernorm",
    positional: str = "learned",
    use_bias: bool = False,
    **overrides,
) -> ModelConfig:
    """An attention-only toy as in "A Mathematical Framework for Transformer Circuits"."""
    return ModelConfig(
        name=f"attn-only-{n_layers}l",
        d_vocab=d_vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=d_head or d_model // n_heads,
        n_ctx=n_ctx,
        d_mlp=None,
        normalization=normalization,
        final_norm=normalization != "none",
        positional=positional,
        use_attn_bias=use_bias,
        use_unembed_bias=use_bias,
        **overrides,
    )


PRESETS = {
    "gemma_2b": gemma_2b,
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma3_1b": gemma3_1b,
}
