"""Configurations with the published sizes of GPT-2, Pythia, Llama 3.2, Qwen 2.5, Mistral
and Gemma models, and attention-only toys.

Sizes are from the models' released `config.json` files (HuggingFace) and the technical
reports; the architectural switches follow `ModelConfig`'s docstring. Each preset equals
what `mechjax.io.load_hf` reads from that model's folder (tests/test_hf_families.py and
tests/test_hf_gemma.py check the published config.json values).
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


# -- GPT-2 ---------------------------------------------------------------------------------

_GPT2_COMMON = dict(
    d_vocab=50_257,
    n_ctx=1024,
    d_head=64,
    act_fn="gelu_tanh",  # HF "gelu_new"
    normalization="layernorm",
    norm_eps=1e-5,
    positional="learned",
    use_attn_bias=True,
    use_mlp_bias=True,
    tied_embeddings=True,
)


def gpt2() -> ModelConfig:
    """GPT-2 small (124M)."""
    return ModelConfig(
        name="gpt2", d_model=768, n_layers=12, n_heads=12, d_mlp=3072, **_GPT2_COMMON
    )


def gpt2_medium() -> ModelConfig:
    """GPT-2 medium (355M)."""
    return ModelConfig(
        name="gpt2-medium", d_model=1024, n_layers=24, n_heads=16, d_mlp=4096, **_GPT2_COMMON
    )


# -- Pythia (GPT-NeoX) ---------------------------------------------------------------------


def _pythia(name: str, d_model: int, n_layers: int, n_heads: int) -> ModelConfig:
    """Pythia: parallel attention and MLP, rotary on a quarter of each head (rotary_pct
    0.25, base 10,000), exact GELU, biases, untied unembedding, vocabulary 50,304."""
    d_head = d_model // n_heads
    return ModelConfig(
        name=name,
        d_vocab=50_304,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=4 * d_model,
        n_ctx=2048,
        act_fn="gelu",
        parallel_attn_mlp=True,
        normalization="layernorm",
        norm_eps=1e-5,
        positional="rope",
        rope_base=10_000.0,
        rotary_dim=d_head // 4,
        use_attn_bias=True,
        use_mlp_bias=True,
        tied_embeddings=False,
    )


def pythia_70m() -> ModelConfig:
    return _pythia("pythia-70m", 512, 6, 8)


def pythia_160m() -> ModelConfig:
    return _pythia("pythia-160m", 768, 12, 12)


def pythia_410m() -> ModelConfig:
    return _pythia("pythia-410m", 1024, 24, 16)


def pythia_1b() -> ModelConfig:
    return _pythia("pythia-1b", 2048, 16, 8)


# -- the Llama family ----------------------------------------------------------------------

_LLAMA_COMMON = dict(
    act_fn="silu",
    gated_mlp=True,  # SwiGLU
    normalization="rmsnorm",
    positional="rope",
)


def llama3_2_1b() -> ModelConfig:
    """Llama 3.2 1B: grouped-query attention (8 kv heads), Llama 3 RoPE scaling (factor
    32 over an original 8192-token context), tied embeddings."""
    return ModelConfig(
        name="llama-3.2-1b",
        d_vocab=128_256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_head=64,
        d_mlp=8192,
        n_ctx=131_072,
        norm_eps=1e-5,
        rope_base=500_000.0,
        rope_scaling=32.0,
        rope_scaling_type="llama3",
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_n_ctx=8192,
        tied_embeddings=True,
        **_LLAMA_COMMON,
    )


def qwen2_5_0_5b() -> ModelConfig:
    """Qwen 2.5 0.5B: q/k/v biases (none on the output projection), 2 kv heads, tied
    embeddings, no sliding window (`use_sliding_window` is false)."""
    return ModelConfig(
        name="qwen2.5-0.5b",
        d_vocab=151_936,
        d_model=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        d_head=64,
        d_mlp=4864,
        n_ctx=32_768,
        norm_eps=1e-6,
        rope_base=1_000_000.0,
        use_attn_bias=True,
        use_attn_out_bias=False,
        tied_embeddings=True,
        **_LLAMA_COMMON,
    )


def mistral_7b() -> ModelConfig:
    """Mistral 7B v0.1: a 4096-token sliding window on every layer, 8 kv heads."""
    n_layers = 32
    return ModelConfig(
        name="mistral-7b-v0.1",
        d_vocab=32_000,
        d_model=4096,
        n_layers=n_layers,
        n_heads=32,
        n_kv_heads=8,
        d_head=128,
        d_mlp=14_336,
        n_ctx=32_768,
        norm_eps=1e-5,
        rope_base=10_000.0,
        sliding_window=4096,
        layer_types=("local",) * n_layers,
        **_LLAMA_COMMON,
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
    "gpt2": gpt2,
    "gpt2_medium": gpt2_medium,
    "pythia_70m": pythia_70m,
    "pythia_160m": pythia_160m,
    "pythia_410m": pythia_410m,
    "pythia_1b": pythia_1b,
    "llama3_2_1b": llama3_2_1b,
    "qwen2_5_0_5b": qwen2_5_0_5b,
    "mistral_7b": mistral_7b,
    "gemma_2b": gemma_2b,
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma3_1b": gemma3_1b,
}
