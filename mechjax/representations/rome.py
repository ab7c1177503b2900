"""ROME: rank-one model editing (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT"), on any mechjax model with MLPs.

An MLP's output matrix is read as a linear associative memory: the key `k` is the MLP's
hidden activation (`mlp_post`, the input of `W_out`) at the last subject token, the
value is what the MLP writes there. ROME inserts a new association `k* -> v*` with the
smallest change to the memory's other keys, weighted by their second moment `C = E[k
k^T]` (eq. 2 of the paper): with `W_out [d_mlp, d_model]` acting on rows,

    W_out' = W_out + (C^{-1} k*) (v* - b_out - k* W_out)^T / (k*^T C^{-1} k*)

a rank-one update after which `k* W_out' + b_out = v*` exactly.

    key_second_moment(params, cfg, batches, layer)          C [d_mlp, d_mlp]
    subject_key(params, cfg, prompts, subject_pos, layer)     k* [d_mlp]
    target_value(params, cfg, prompts, subject_pos, layer, new_token, ...)
                                                             v* [d_model] (optimised)
    rank_one_update(params, cfg, layer, key, value, C)        RomeEdit (new params)
    edit_scores(params, cfg, prompts, new_token, old_token)   efficacy per prompt

`target_value` follows the paper's eq. 4: `v*` minimises the negative log-probability of
the new object after each fact prompt with the MLP output at the subject replaced by
`v`, plus `kl_factor` x the KL divergence of the next-token distribution after essence
prompts ("{subject} is a") from the unedited model's, plus `weight_decay` x
`||v - v_0|| / ||v_0||^2` (the form and the defaults, `kl_factor` 0.0625 and
`weight_decay` 0.5, of the paper's GPT-2 XL settings; `v_0` the unedited output). Scores (paper, Section 3): efficacy, paraphrase and
neighbourhood are each the fraction of prompts where `P(new) > P(old)` (for
neighbourhood prompts, about other subjects, the fraction where the true object still
wins: `P(old) > P(new)`).

Models with a post-MLP norm (Gemma 2 / 3) are refused: their MLP output is normalised
by a data-dependent scale after `W_out`, so no rank-one change of `W_out` writes a given
`v*` exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..causal import sweep
from ..model import edits
from ..model.config import ModelConfig
from ..model.transformer import run


@dataclasses.dataclass(frozen=True)
class RomeEdit:
    """The edited parameters and the update `W_out[layer] += outer(left, right)`:
    left `[d_mlp]` = `C^{-1} k* / (k*^T C^{-1} k*)`, right `[d_model]` = `v* - b_out - k*
    W_out`."""

    params: dict
    layer: int
    key: np.ndarray
    value: np.ndarray
    left: np.ndarray
    right: np.ndarray


def _check_model(cfg: ModelConfig, layer: int) -> None:
    if cfg.attn_only:
        raise ValueError("ROME edits an MLP: this model is attention-only")
    if cfg.post_mlp_norm:
        raise ValueError(
            "ROME needs the MLP output to be linear in W_out; this model normalises it after "
            "W_out (post_mlp_norm, Gemma 2/3), so a rank-one update cannot write v* exactly"
        )
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} out of range: the model has layers 0..{cfg.n_layers - 1}")


def _positions(subject_pos, n: int, n_pos: int) -> np.ndarray:
    """The last subject token of each prompt, `[n]` (an int for all prompts, or one each)."""
    where = np.broadcast_to(np.asarray(subject_pos), (n,)).astype(int)
    if where.min() < 0 or where.max() >= n_pos:
        raise ValueError(f"subject_pos {where.tolist()} must lie in 0..{n_pos - 1}")
    return where


def key_second_moment(params, cfg: ModelConfig, batches, layer: int) -> np.ndarray:
    """`C = E[k k^T]` `[d_mlp, d_mlp]` (float64) of the MLP keys at `layer` over every
    position of `batches` (an iterable of `[batch, pos]` token arrays: text the model
    reads, e.g. its training data)."""
    _check_model(cfg, layer)
    total, count = np.zeros((cfg.d_mlp, cfg.d_mlp)), 0
    for tokens in batches:
        (tokens,) = sweep.check_model_inputs(params, cfg, tokens)
        keys = np.asarray(_keys(params, tokens, cfg), np.float64)[layer].reshape(-1, cfg.d_mlp)
        total += keys.T @ keys
        count += len(keys)
    if count == 0:
        raise ValueError("batches is empty: give at least one [batch, pos] token array")
    return total / count


_keys = jax.jit(
    lambda p, t, cfg: run(p, t, cfg, capture=("mlp_post",))[1]["mlp_post"], static_argnums=2
)


def subject_key(params, cfg: ModelConfig, prompts, subject_pos, layer: int) -> np.ndarray:
    """`k*` `[d_mlp]`: the mean MLP key at `layer` over the last subject token of each
    prompt (`prompts [n, pos]`, e.g. the subject after several random prefixes, as the
    paper averages)."""
    _check_model(cfg, layer)
    (prompts,) = sweep.check_model_inputs(params, cfg, prompts)
    where = _positions(subject_pos, prompts.shape[0], prompts.shape[1])
    keys = np.asarray(_keys(params, prompts, cfg))[layer]  # [n, pos, d_mlp]
    return keys[np.arange(len(where)), where].mean(0)


def target_value(
    params,
    cfg: ModelConfig,
    prompts,
    subject_pos,
    layer: int,
    new_token: int,
    *,
    essence=None,
    essence_subject_pos=None,
    kl_factor: float = 0.0625,
    weight_decay: float = 0.5,
    steps: int = 100,
    learning_rate: float = 0.5,
) -> np.ndarray:
    """`v*` `[d_model]`: the MLP output at `layer` and the last subject token that makes
    `new_token` the next token after each of `prompts [n, pos]` (paper, eq. 4; see the
    module docstring). essence: optional `[m, pos]` prompts about the subject whose
    next-token distribution should not drift (the KL term), with their own subject
    positions. Adam, `steps` steps of `learning_rate`."""
    _check_model(cfg, layer)
    (prompts,) = sweep.check_model_inputs(params, cfg, prompts)
    where = _positions(subject_pos, prompts.shape[0], prompts.shape[1])
    if not 0 <= new_token < cfg.d_vocab:
        raise ValueError(f"new_token {new_token} is outside the vocabulary [0, {cfg.d_vocab})")
    outputs = run(params, prompts, cfg, capture=("mlp_out",))[1]["mlp_out"][layer]
    v0 = jnp.mean(outputs[jnp.arange(len(where)), jnp.asarray(where)], axis=0)
    at_subject = jax.nn.one_hot(where, prompts.shape[1])[:, :, None]  # [n, pos, 1]

    if essence is not None:
        (essence,) = sweep.check_model_inputs(params, cfg, essence)
        e_where = _positions(essence_subject_pos, essence.shape[0], essence.shape[1])
        e_at = jax.nn.one_hot(e_where, essence.shape[1])[:, :, None]
        e_base = jax.nn.log_softmax(run(params, essence, cfg)[0][:, -1].astype(jnp.float32))

    def replaced(tokens, mask, v):
        """Run with the MLP output at the subject set to v (the rest untouched)."""
        edit = edits.transform("mlp_out", _put, (mask, v), layer=layer)
        return run(params, tokens, cfg, edits=(edit,))[0][:, -1].astype(jnp.float32)

    def loss(v):
        nll = -jax.nn.log_softmax(replaced(prompts, at_subject, v))[:, new_token].mean()
        # the reference implementation's decay: ||v - v0|| / ||v0||^2 (smoothed at v0)
        decay = weight_decay * jnp.sqrt(jnp.sum((v - v0) ** 2) + 1e-12) / jnp.sum(v0**2)
        if essence is None:
            return nll + decay
        e_new = jax.nn.log_softmax(replaced(essence, e_at, v))
        kl = jnp.sum(jnp.exp(e_base) * (e_base - e_new), axis=-1).mean()
        return nll + kl_factor * kl + decay

    optimizer = optax.adam(learning_rate)

    @jax.jit
    def optimise(v):
        def step(carry, _):
            v, state = carry
            value, grad = jax.value_and_grad(loss)(v)
            updates, state = optimizer.update(grad, state, v)
            return (optax.apply_updates(v, updates), state), value

        (v, _), losses = jax.lax.scan(step, (v, optimizer.init(v)), None, length=steps)
        return v, losses

    v, _ = optimise(v0.astype(jnp.float32))
    return np.asarray(v)


def _put(act, mask_and_value):
    """`act [batch, pos, d_model]` with `value` where `mask [batch, pos, 1]` is 1."""
    mask, value = mask_and_value
    return act * (1 - mask) + mask * value


def rank_one_update(params, cfg: ModelConfig, layer: int, key, value, C) -> RomeEdit:
    """Insert `key -> value` into the MLP at `layer` (the closed form of the module
    docstring, solved in float64). `C`: the keys' second moment (`key_second_moment`);
    a singular or badly conditioned C is refused."""
    _check_model(cfg, layer)
    key = np.asarray(key, np.float64).reshape(-1)
    value = np.asarray(value, np.float64).reshape(-1)
    C = np.asarray(C, np.float64)
    if key.shape != (cfg.d_mlp,) or value.shape != (cfg.d_model,):
        raise ValueError(
            f"key must be [d_mlp={cfg.d_mlp}] and value [d_model={cfg.d_model}], got "
            f"{key.shape} and {value.shape}"
        )
    if C.shape != (cfg.d_mlp, cfg.d_mlp):
        raise ValueError(f"C must be [d_mlp, d_mlp] = [{cfg.d_mlp}, {cfg.d_mlp}], got {C.shape}")
    if np.linalg.cond(C) > 1e12:
        raise ValueError(
            "the key second moment C is singular (too few keys, or dead units); estimate it "
            "on more text, or add a small multiple of the identity"
        )
    blocks = params["blocks"]
    W = np.asarray(blocks["W_out"][layer], np.float64)
    b = np.asarray(blocks["b_out"][layer], np.float64) if cfg.use_mlp_bias else 0.0
    direction = np.linalg.solve(C, key)
    left = direction / (direction @ key)
    right = value - b - key @ W
    new_W = (
        blocks["W_out"].at[layer].set(jnp.asarray(W + np.outer(left, right), blocks["W_out"].dtype))
    )
    new_params = {**params, "blocks": {**blocks, "W_out": new_W}}
    return RomeEdit(new_params, layer, key, value, left, right)


def edit_scores(params, cfg: ModelConfig, prompts, new_token: int, old_token: int) -> np.ndarray:
    """`P(new) > P(old)` for the next token after each prompt `[n, pos]`: `[n]` bool.
    Its mean over the edited prompt is the paper's efficacy, over paraphrases its
    generalisation; over neighbourhood prompts `1 - mean` is the specificity."""
    (prompts,) = sweep.check_model_inputs(params, cfg, prompts)
    logits = np.asarray(run(params, prompts, cfg)[0][:, -1])
    return logits[:, new_token] > logits[:, old_token]
