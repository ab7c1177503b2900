"""The residual stream as a pytree of labelled writes, and direct logit attribution.

`run_with_stream` returns a `Stream`: a mapping from captured names to arrays. With the
default capture ("writes") it holds every write into the residual stream:

    embed            [batch, pos, d_model]        token embedding (scaled, for Gemma)
    pos_embed        [batch, pos, d_model]        learned positions (if the model has them)
    head_writes      [layer, batch, pos, head, d_model]   each head's write
    attn_bias_writes [layer, batch, pos, d_model]        b_O's write (and a post-norm's bias)
    mlp_out          [layer, batch, pos, d_model]        each MLP's write
    final_resid      [batch, pos, d_model]        the residual before the final norm
    ln_final_scale   [batch, pos, 1]              the final norm's frozen scale

and they sum to `final_resid` exactly (to float32 rounding) for an unedited run. Gemma
2/3's post-attention norm is linear once its scale (taken from the sum of the heads) is
frozen, so each head's write is that linear map applied to the head's own output.

Direct logit attribution pushes each write through the final norm with its scale frozen
and through W_U: the contributions sum to the logits *before* the final soft-cap. Soft-
capping (Gemma 2: 30 * tanh(logits / 30)) is applied to the sum, not to each part, so
it cannot be split among components: attributions are exact for the pre-cap logits and
only approximate the capped ones where |logit| is well below the cap. Likewise a
component's attribution holds the norm scale fixed: it answers "what does this write
add, given the scale the whole residual produced", not "what if the write were removed".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from .config import ModelConfig
from .params import Params, unembedding
from .unembed import final_norm_linear, logit_bias


@struct.dataclass
class Stream:
    acts: dict

    def __getitem__(self, name: str) -> jax.Array:
        if name not in self.acts:
            raise KeyError(
                f"{name!r} was not captured; captured: {sorted(self.acts)}. Pass it in "
                "run_with_stream(..., capture=[...]) or capture='all'."
            )
        return self.acts[name]

    def __contains__(self, name: str) -> bool:
        return name in self.acts

    def keys(self):
        return self.acts.keys()

    def components(self, cfg: ModelConfig) -> tuple[list[str], jax.Array]:
        """Every write, labelled: `(labels, writes [component, batch, pos, d_model])`.

        Labels: "embed", "pos_embed", "L{l}H{h}" per head, "L{l}attn_bias", "L{l}mlp".
        """
        needed = ["embed", "head_writes", "attn_bias_writes"]
        if cfg.positional == "learned":
            needed.append("pos_embed")
        if not cfg.attn_only:
            needed.append("mlp_out")
        if cfg.n_layers == 0:
            needed = [n for n in needed if n in ("embed", "pos_embed")]
        missing = [n for n in needed if n not in self.acts]
        if missing:
            raise KeyError(
                f"the decomposition needs {missing}; capture them (capture='writes' has all)"
            )
        labels, parts = ["embed"], [self["embed"][None]]
        if cfg.positional == "learned":
            labels.append("pos_embed")
            parts.append(self["pos_embed"][None])
        for layer in range(cfg.n_layers):
            labels += [f"L{layer}H{h}" for h in range(cfg.n_heads)]
            parts.append(jnp.moveaxis(self["head_writes"][layer], 2, 0))
            labels.append(f"L{layer}attn_bias")
            parts.append(self["attn_bias_writes"][layer][None])
            if not cfg.attn_only:
                labels.append(f"L{layer}mlp")
                parts.append(self["mlp_out"][layer][None])
        return labels, jnp.concatenate(parts, axis=0)

    def residual(self, cfg: ModelConfig) -> jax.Array:
        """The sum of all writes [batch, pos, d_model]; equals `final_resid`."""
        return self.components(cfg)[1].sum(axis=0)

    def accumulated(self, cfg: ModelConfig) -> tuple[list[str], jax.Array]:
        """The residual after the embeddings and after each layer:
        `(labels, resid [layer + 1, batch, pos, d_model])` (labels "embed", "L0", ...)."""
        resid = self["embed"] + (self["pos_embed"] if cfg.positional == "learned" else 0)
        labels, out = ["embed"], [resid]
        for layer in range(cfg.n_layers):
            resid = resid + self["head_writes"][layer].sum(axis=2) + self["attn_bias_writes"][layer]
            if not cfg.attn_only:
                resid = resid + self["mlp_out"][layer]
            labels.append(f"L{layer}")
            out.append(resid)
        return labels, jnp.stack(out)


def apply_final_norm_linear(
    x: jax.Array, stream: Stream, params: Params, cfg: ModelConfig
) -> jax.Array:
    """The final norm's linear part at the run's frozen scale: x [..., batch, pos, d_model]."""
    if not cfg.has_final_norm:
        return x
    return final_norm_linear(params, cfg, x, stream["ln_final_scale"])


def logit_attribution(
    params: Params, cfg: ModelConfig, stream: Stream, token_ids=None, minus_ids=None
) -> tuple[list[str], jax.Array]:
    """Direct logit attribution of every write.

    Without `token_ids`: `(labels, logits [component, batch, pos, vocab])`. With
    `token_ids` (an int or `[batch, pos]`): each component's contribution to that
    token's logit, minus `minus_ids`'s if given (a logit difference): `[component, batch,
    pos]`. The last label, "bias", is what no write owns (final-norm bias and b_U). The
    components sum to the pre-soft-cap logits (see the module docstring).
    """
    labels, parts = stream.components(cfg)
    normed = apply_final_norm_linear(parts, stream, params, cfg)
    bias = logit_bias(params, cfg)
    W_U = unembedding(params)
    if token_ids is None:
        per = jnp.einsum("cbpd,dv->cbpv", normed, W_U)
        const = jnp.broadcast_to(bias, per.shape[1:])
    else:
        ids = jnp.broadcast_to(jnp.asarray(token_ids), parts.shape[1:3])
        directions, const = W_U.T[ids], bias[ids]
        if minus_ids is not None:
            minus = jnp.broadcast_to(jnp.asarray(minus_ids), parts.shape[1:3])
            directions, const = directions - W_U.T[minus], const - bias[minus]
        per = jnp.einsum("cbpd,bpd->cbp", normed, directions)
    return labels + ["bias"], jnp.concatenate([per, const[None].astype(per.dtype)], axis=0)
