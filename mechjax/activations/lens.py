"""The logit lens (nostalgebraist 2020): read the residual stream after each layer as if
it were the last one, by applying the model's own output head — final norm, with the
scale computed from *that* residual (not the final residual's frozen scale), the
unembedding, its bias and any final soft-cap — to the accumulated residual after the
embeddings and after each layer. The last entry is the model's own logits.

    logit_lens(params, cfg, stream)   -> logits [layer + 1, batch, pos, vocab]
    top_tokens(lens_logits, k)        -> (ids, probs) [layer + 1, batch, pos, k]

The tuned lens is in `tuned_lens.py`; the figure in `mechjax.views.lens`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..model.config import ModelConfig
from ..model.stream import Stream
from ..model.unembed import output_head


def accumulated_residual(stream: Stream, cfg: ModelConfig) -> jax.Array:
    """The residual after the embeddings and after each layer, `[layer + 1, batch, pos,
    d_model]`, summed from a stream's writes (a clear error when they were not captured)."""
    needed = ["embed"] + (["pos_embed"] if cfg.positional == "learned" else [])
    if cfg.n_layers:
        needed += ["head_writes", "attn_bias_writes"] + ([] if cfg.attn_only else ["mlp_out"])
    missing = [n for n in needed if n not in stream]
    if missing:
        raise ValueError(
            f"the stream lacks {missing}; run mj.run_with_stream(..., capture='writes') "
            "(the default) to capture every write"
        )
    return stream.accumulated(cfg)[1]


def logit_lens(params, cfg: ModelConfig, stream: Stream) -> jax.Array:
    """Logit lens: `[layer + 1, batch, pos, vocab]`; entry 0 reads the embeddings,
    entry l + 1 the residual after layer l, the last one equals the model's logits."""
    return output_head(params, cfg, accumulated_residual(stream, cfg))


def top_tokens(lens_logits: jax.Array, k: int = 1) -> tuple[jax.Array, jax.Array]:
    """The `k` most likely tokens of each lens entry and their probabilities, each
    `[..., k]` (probabilities from a softmax over the vocabulary)."""
    if not isinstance(k, int) or not 1 <= k <= lens_logits.shape[-1]:
        raise ValueError(f"k must be an int in 1..{lens_logits.shape[-1]}, got {k!r}")
    probs = jax.nn.softmax(lens_logits.astype(jnp.float32), axis=-1)
    top_p, top_i = jax.lax.top_k(probs, k)
    return top_i, top_p
