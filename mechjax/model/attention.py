"""The attention kernel and its masks: scores, the float32 softmax over keys, causal and
sliding-window masks, causal attention computed in cache-sized pieces ("chunked", for
CPUs), and JAX's fused attention ("fused", for GPUs; `attention_implementation` picks).

Axes: `qh [batch, kv_head, group, query, d_head]` (query heads grouped under the key/value
head they share, HF's repeat_kv order), `kh, vh [batch, kv_head, key, d_head]`; the fused
kernel takes the position-major `[batch, pos, head, d_head]` instead. The block wiring
(projections, RoPE, sites, the output projection) is in `transformer.py`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .layers import softcap

ATTENTION_ENV = "MECHJAX_ATTENTION"
ATTENTION_CHOICES = ("fused", "chunked", "auto")
GPU_BACKENDS = ("gpu", "cuda", "rocm")


def attention_implementation(cfg: ModelConfig | None = None) -> str:
    """How the forward's fast path computes attention: "fused" (`fused_causal_attention`,
    JAX's `jax.nn.dot_product_attention`) or "chunked" (`causal_attention`).

    "fused" when JAX's default backend is a GPU ("gpu", "cuda" or "rocm"), "chunked"
    otherwise; the environment variable `MECHJAX_ATTENTION` overrides it: "fused",
    "chunked" or "auto" (the rule above; also when unset or empty). A model with an
    attention-logit soft-cap (`cfg.attn_logit_softcap`, Gemma 2) is always "chunked": the
    fused kernel has no soft-cap. Read when the forward is traced: after changing the
    variable, `jax.clear_caches()` makes already-compiled functions pick again.
    """
    raw = os.environ.get(ATTENTION_ENV, "")
    choice = raw.strip().lower() or "auto"
    if choice not in ATTENTION_CHOICES:
        raise ValueError(
            f"{ATTENTION_ENV}={raw!r} is not one of {', '.join(ATTENTION_CHOICES)} "
            "(unset: auto, fused on a GPU and chunked elsewhere)"
        )
    if choice == "auto":
        choice = "fused" if jax.default_backend() in GPU_BACKENDS else "chunked"
    if cfg is not None and cfg.attn_logit_softcap is not None:
        return "chunked"
    return choice


def fused_causal_attention(q, k, v, window, cfg: ModelConfig, dtype, key_valid=None):
    """The mixed values `[batch, pos, head, d_head]` of queries q `[batch, pos, head,
    d_head]` over keys/values k, v `[batch, pos, kv_head, d_head]` (query head n reads
    key/value head n // group_size, as `causal_attention`), through
    `jax.nn.dot_product_attention`: the same causal, sliding-window (`window`, possibly
    traced per layer) and padding (`key_valid [batch, pos]`) masking as `attention_mask`,
    given as a boolean mask, or as `is_causal` when the model has no local layers and
    nothing is padded. No soft-cap (`attention_implementation` keeps such models chunked).

    Which kernel: cuDNN's flash attention where `cudnn_eligible` (GPU, fp16/bf16, plain
    causal mask, head sizes in multiples of 8 up to 128), else `implementation=None`,
    which in JAX 0.10 is its XLA implementation on every backend (automatic selection of
    cuDNN is still a TODO there): one masked softmax per layer, float32 logits and
    softmax cast to `dtype` as `softmax_over_keys` does, materialising the `[batch,
    head, pos, pos]` scores. The chunked path's sequential `lax.map` and query blocks are
    tuned for CPU caches, not for a GPU (no GPU timings yet). Like every fused kernel,
    cuDNN's never returns the attention probabilities: which is why captured or edited
    `scores` / `pattern` keep our own path.

    Tolerances (tests/test_gpu_paths.py, on a CPU): in float32 the logits and gradients
    equal the chunked path's to rounding (<= 3e-7 of the logits' scale; tested at 1e-5).
    In bfloat16 activations the two paths differ by bfloat16 rounding: logits within 2%
    of their scale (about 1% measured), each about as far from the float32 logits.
    """
    causal = key_valid is None and not cfg.has_local_layers
    mask = None
    if not causal:
        mask = attention_mask(k.shape[1], window, None, key_valid)
        mask = mask[None, None] if mask.ndim == 2 else mask[:, None]  # [batch, 1, query, key]
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    if cudnn_eligible(cfg, dtype, causal, jax.default_backend()):
        try:
            return jax.nn.dot_product_attention(
                q, k, v, scale=cfg.attn_scale, is_causal=True, implementation="cudnn"
            )
        except (RuntimeError, NotImplementedError, ValueError):
            pass  # this GPU or cuDNN version lacks the kernel (checked while tracing): XLA's
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=cfg.attn_scale, is_causal=causal, implementation=None
    )


def cudnn_eligible(cfg: ModelConfig, dtype, causal: bool, backend: str) -> bool:
    """Whether the fused path asks for cuDNN's flash-attention kernel: on a GPU, for
    16-bit activations, plain causal masks (no padding, no per-layer windows: a traced
    window cannot become cuDNN's static one) and head sizes it takes (multiples of 8 up
    to 128). Otherwise, or when cuDNN refuses while tracing, JAX's XLA implementation
    runs. Not yet run on a GPU by this project's tests (the CPU tests check this rule)."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    head_ok = cfg.d_head % 8 == 0 and cfg.d_head <= 128
    return backend in GPU_BACKENDS and half and causal and head_ok


def attention_scores(qh, kh, cfg: ModelConfig) -> jax.Array:
    """Scaled (and soft-capped) attention scores before masking: `[batch, kv_head, group,
    query, key]`. qh [batch, kv_head, group, query, d_head], kh [batch, kv_head, key,
    d_head]."""
    scores = jnp.einsum("bkgqe,bkse->bkgqs", qh, kh)
    return softcap(scores * cfg.attn_scale, cfg.attn_logit_softcap)


def masked_attention(qh, kh, vh, mask, cfg: ModelConfig, dtype) -> jax.Array:
    """Softmax attention of queries qh over keys/values kh, vh under `mask [query, key]`
    (or `[batch, query, key]` with padding): the mixed values `[batch, kv_head, group,
    query, d_head]`."""
    mask = mask if mask.ndim == 2 else mask[:, None, None]
    scores = jnp.where(mask, attention_scores(qh, kh, cfg), -jnp.inf)
    return jnp.einsum("bkgqs,bkse->bkgqe", softmax_over_keys(scores, dtype), vh)


def softmax_over_keys(scores: jax.Array, dtype) -> jax.Array:
    """Softmax over keys, in float32 whatever the model's dtype (as the references do)."""
    return jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(dtype)


def attention_in_query_blocks(qh, kh, vh, window, cfg: ModelConfig, dtype, key_valid=None):
    """Masked softmax attention, query block by query block (`causal_query_blocks`):
    the masked triangle above the blocks is never computed. Shapes as `causal_attention`."""
    zh = []
    for start, stop in causal_query_blocks(qh.shape[3]):
        valid = None if key_valid is None else key_valid[:, :stop]
        mask = attention_mask(stop, window, range(start, stop), valid)
        zh.append(
            masked_attention(
                qh[:, :, :, start:stop], kh[:, :, :stop], vh[:, :, :stop], mask, cfg, dtype
            )
        )
    return jnp.concatenate(zh, axis=3)


def causal_attention(qh, kh, vh, window, cfg: ModelConfig, dtype, key_valid=None) -> jax.Array:
    """The mixed values `[batch, kv_head, group, pos, d_head]` of queries qh `[batch,
    kv_head, group, pos, d_head]` over keys/values kh, vh `[batch, kv_head, pos, d_head]`;
    `key_valid [batch, pos]` (bool) hides padding keys (`attention_mask`).

    On CPU attention is bound by memory traffic on the `[head, query, key]` score tensors,
    not by arithmetic. So sequences go through in small chunks (`lax.map`; each chunk's
    scores stay in cache and reuse one buffer), and each chunk is rematerialised in the
    backward pass rather than storing its softmax for the whole batch. Same values as
    one big masked softmax; several times faster at the benchmarks' training sizes
    (experiments/benchmarks/README.md).
    """
    B, _, _, P, _ = qh.shape
    chunk = attention_batch_chunk(B, cfg.n_heads, P)
    if chunk == B:
        return attention_in_query_blocks(qh, kh, vh, window, cfg, dtype, key_valid)
    split = lambda x: x.reshape(B // chunk, chunk, *x.shape[1:])  # noqa: E731
    if key_valid is None:
        body = jax.checkpoint(lambda x: attention_in_query_blocks(*x, window, cfg, dtype))
        zh = jax.lax.map(body, (split(qh), split(kh), split(vh)))
    else:
        body = jax.checkpoint(lambda x: attention_in_query_blocks(*x[:3], window, cfg, dtype, x[3]))
        zh = jax.lax.map(body, (split(qh), split(kh), split(vh), split(key_valid)))
    return zh.reshape(B, *zh.shape[2:])


def attention_mask(n_keys: int, window: jax.Array, queries=None, key_valid=None):
    """`[query_pos, key_pos]` causal mask over keys `0 .. n_keys - 1`, keys within `window`
    positions (inclusive of the query itself: q - k < window). `queries`: the query rows'
    positions (a `range`, a sequence of ints or a traced int array; default: all `n_keys`
    of them). `window` may be traced (per-layer).

    key_valid: `[batch, n_keys]` bool, False at padding. The mask is then `[batch,
    query_pos, key_pos]` and hides padding keys, except that every query sees its own
    key: a padding query's row is never empty (an all-masked softmax would be NaN, and
    its value would poison later rows through `0 * NaN`); what padding positions compute
    is discarded. Positions are columns of the padded batch, so left or right padding
    keeps causal order and window lengths within each prompt."""
    if queries is None:
        queries = range(n_keys)
    if not isinstance(queries, jax.Array):  # static positions (traced ones: cached decoding)
        queries = np.asarray(queries)
    q = jnp.asarray(queries, jnp.int32)[:, None]
    k = jnp.arange(n_keys)[None, :]
    allowed = (k <= q) & (q - k < window)
    if key_valid is None:
        return allowed
    return allowed[None] & (key_valid[:, None, :] | (k == q)[None])


def causal_query_blocks(n_pos: int, min_rows: int = 32, max_blocks: int = 8):
    """Split query positions into blocks `[(start, stop), ...]` for causal attention.

    Queries in block `[start, stop)` see keys `0 .. stop - 1` only, so scoring block by
    block skips most of the masked upper triangle and keeps each block's
    `[batch, head, rows, keys]` scores small enough to stay in cache: on a 2-core CPU
    this is 2-4x faster than one `[pos, pos]` score matrix at 256 positions
    (experiments/benchmarks). At most `max_blocks` blocks (each one is its own pair of
    matmuls), of at least `min_rows` rows.
    """
    n_blocks = max(1, min(max_blocks, n_pos // min_rows))
    edges = np.linspace(0, n_pos, n_blocks + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def attention_batch_chunk(n_batch: int, n_heads: int, n_pos: int, budget: int = 2**21) -> int:
    """Sequences per chunk of causal attention: the largest divisor of `n_batch` whose
    `[chunk, head, pos, pos]` scores hold at most `budget` floats (8 MiB; a few such
    tensors fit in a 32 MiB L3 cache), and at least 1."""
    fits = max(1, budget // max(1, n_heads * n_pos * n_pos))
    return max(c for c in range(1, n_batch + 1) if n_batch % c == 0 and c <= fits)
