"""Olsson et al. 2022's copying score: does a head's direct effect on the logits raise
the token it attends to? (The eigenvalue copying statistic of a head's full OV circuit
is `mechjax.circuits.ov_eigenvalue_copying`, a different measure.)

    head_logit_effects(params, cfg, stream)        -> [layer, head, batch, pos, vocab]
    copying_scores(params, cfg, stream, tokens)    -> [layer, head]

`mechjax.activations.heads` computes it with the other head detectors from one run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..model import layers
from ..model.config import ModelConfig
from ..model.params import Params, unembedding
from ..model.stream import Stream
from ..model.unembed import final_norm_linear


def head_logit_effects(params: Params, cfg: ModelConfig, stream: Stream) -> jax.Array:
    """Each head's direct effect on the logits, `[layer, head, batch, pos, vocab]` float32:
    its write through the norms' linear parts (with the run's frozen scales, no biases)
    and the unembedding, i.e. `N(head_writes) @ W_U` (pre-soft-cap).

    Needs `stream` with "z" (and "ln1_post_scale" / "ln_final_scale" where the model has
    those norms). Every map between `z` and the logits is linear once the scales are
    frozen, and a scale is one number per (batch, pos), so the product is taken as
    `z @ (W_O N W_U)` with `[layer, head, d_head, vocab]` matrices and the scales applied
    afterwards: d_head-wide products instead of d_model-wide ones, and no `head_writes`.
    """
    norm = layers.Norm(cfg)
    blocks = params["blocks"]
    W = blocks["W_O"].astype(jnp.float32)  # [layer, head, d_head, d_model]
    scale = jnp.ones(stream["z"].shape[:3], jnp.float32)  # [layer, batch, pos]
    if cfg.post_attn_norm:
        W = norm.linear(W, 1.0, blocks["ln1_post_w"][:, None, None, :])
        scale = scale * stream["ln1_post_scale"][..., 0]
    if cfg.has_final_norm:
        W = final_norm_linear(params, cfg, W, 1.0)
        scale = scale * stream["ln_final_scale"][None, ..., 0]
    to_vocab = jnp.einsum("lhed,dv->lhev", W, unembedding(params).astype(jnp.float32))
    logits = jnp.einsum("lbqhe,lhev->lhbqv", stream["z"].astype(jnp.float32), to_vocab)
    return logits * scale[:, None, :, :, None]


def copying_scores(params: Params, cfg: ModelConfig, stream: Stream, tokens) -> jax.Array:
    """Olsson et al. 2022's copying score `[layer, head]`, in [-1, 1]: does the head's
    direct effect raise the logit of the token it attends to?

    Their evaluator (Methods, "head activation evaluators"): compute the head's
    contribution to the residual stream and convert it to logits along the direct path;
    subtract the mean logit and apply a ReLU ("to focus on where logits are raised");
    take the ratio of the raise of the token being attended to over the raise of all
    tokens in the sample; rescale to [-1, 1]. Here, for head h at query q of a run on
    `tokens [batch, pos]`:

    * `l_q = N(head_writes[q]) @ W_U` `[vocab]`: the head's direct logit effect, N the
      norms' linear parts at the run's frozen scales (`head_logit_effects`);
    * `u_q = relu(l_q - mean_v l_q)`;
    * `f_q = sum_k pattern[q, k] u_q[tokens[k]] / sum_{t in S} u_q[t]`, S the distinct
      token ids of the sequence (BOS included): in [0, 1], 1 when every raise among
      the sample's tokens lands on what the head attends to;
    * score = mean over the batch and the queries q >= 1 (position 0, usually BOS,
      attends only to itself) of `2 f_q - 1`; 0 when nothing in S is raised.

    The denominator runs over the sample's tokens, not the vocabulary: over the whole
    vocabulary a head whose OV circuit has rank d_head << vocab spreads raises over
    thousands of ids and every head scores near -1, copier or not. The paper states the
    ratio's range as 0..0.5 before rescaling, which its prose does not explain; we use
    the natural 0..1 range of the ratio as defined, as replications do. Reference
    points (tested): a perfect copier scores +1; a head that lowers what it attends to,
    or raises only other tokens of the sample, -1; a head whose effect is unrelated to
    what it attends to `2/n - 1` in expectation, n the number of distinct tokens in the
    sequence (about -0.92 on Olsson's 25 random tokens and a BOS). mechjax runs it on
    the detectors' repeated random tokens, where an induction head attends to the token
    it should copy. Pre-soft-cap logits (Gemma 2) are used. The eigenvalue statistic of
    a head's full OV circuit is another measure (`circuits.ov_eigenvalue_copying`).
    """
    tokens = jnp.asarray(tokens)
    pattern = stream["pattern"].astype(jnp.float32)  # [layer, batch, head, q, k]
    logits = head_logit_effects(params, cfg, stream)  # [layer, head, batch, q, vocab]
    raised = jax.nn.relu(logits - logits.mean(-1, keepdims=True))
    batch = tokens.shape[0]
    in_sample = jnp.zeros((batch, logits.shape[-1]), jnp.float32)
    in_sample = in_sample.at[jnp.arange(batch)[:, None], tokens].set(1.0)  # [batch, vocab]
    total = (raised * in_sample[None, None, :, None, :]).sum(-1)  # [layer, head, batch, q]
    # the raise of every attended (key) token at every query: u_q[tokens[b, k]]
    index = jnp.broadcast_to(tokens[None, None, :, None, :], raised.shape[:-1] + tokens.shape[-1:])
    on_keys = jnp.take_along_axis(raised, index, axis=-1)  # [layer, head, batch, q, k]
    attended = (jnp.moveaxis(pattern, 2, 1) * on_keys).sum(-1)
    frac = jnp.where(total > 0, attended / jnp.where(total > 0, total, 1.0), 0.0)
    return (2.0 * frac[..., 1:] - 1.0).mean(axis=(2, 3))
