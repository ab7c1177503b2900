"""Predicting tokens with the model: sampling with a key/value cache, and the greedy
next token of many prompts.

    out = generate(params, tokens, cfg, max_new_tokens=20, mask=mask, eos_id=1)
    out.tokens [batch, pos + new]   out.mask [batch, pos + new]   out.new_tokens [batch, new]
    greedy_next_tokens(params, tokens, cfg) -> ids [prompt]

`generate` runs the prompt once (prefill), keeping every layer's keys and values in a
cache of `pos + max_new_tokens` slots, then one token per step, each attending over the
cache: the whole loop is one compiled program (`lax.while_loop`), which stops when every
prompt has produced `eos_id`. Greedy decoding (`temperature=0`, the default) or sampling
at a temperature, optionally restricted to the `top_k` most likely tokens and/or the
smallest set whose probability reaches `top_p`; sampling is reproducible from `key`.

Ragged prompts are re-padded on the left (a right-padded batch is moved), so every
prompt's last token sits in the last prompt column and generated tokens follow it; the
output's mask marks real tokens (padding and anything after a prompt's EOS are False).

Edits apply during generation exactly as in a forward pass over the growing sequence
(tested against that): positions are slots, the columns of the left-padded output
array, so `pos=p` edits column `p` of every prompt; `pos=None` reaches the generated
tokens too. An edit's value must be the same at every position (a vector, not one laid
out over the prompt's positions): the generated positions have none of their own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .checks import check_config, check_mask, check_tokens
from .config import ModelConfig
from .edits import Edit, check_edits
from .padding import last_token_index, pad_sequences
from .params import check_params
from .sites import SITES
from .transformer import forward, run


@struct.dataclass
class GenerationResult:
    """tokens `[batch, pos + new]` (left-padded prompt, then the generated tokens, then
    `pad_id` after a prompt's EOS); mask `[batch, pos + new]` (True at real tokens, EOS
    included); new_tokens `[batch, new]` (the generated columns); n_prompt: the prompt
    columns."""

    tokens: np.ndarray
    mask: np.ndarray
    new_tokens: np.ndarray
    n_prompt: int = struct.field(pytree_node=False)


def generate(
    params,
    tokens,
    cfg: ModelConfig,
    *,
    max_new_tokens: int,
    mask=None,
    key=None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    edits=(),
) -> GenerationResult:
    """Continue each prompt of `tokens [batch, pos]` (`mask`: padding, as in
    `forward`) by up to `max_new_tokens` tokens. See the module docstring."""
    check_config(cfg)
    check_tokens(tokens, cfg)
    check_params(params, cfg)
    mask = check_mask(mask, tokens)
    n_new = _positive_int(max_new_tokens, "max_new_tokens")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= cfg.d_vocab):
        raise ValueError(f"top_k must be an integer in [1, {cfg.d_vocab}] or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs a key: key=jax.random.PRNGKey(0)")
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and not (
            isinstance(value, (int, np.integer)) and 0 <= value < cfg.d_vocab
        ):
            raise ValueError(f"{name}={value!r} is not a token id in [0, {cfg.d_vocab})")
    n_slots = tokens.shape[1] + n_new
    if cfg.positional == "learned" and n_slots > cfg.n_ctx:
        raise ValueError(
            f"{tokens.shape[1]} prompt columns + {n_new} new tokens exceed the learned "
            f"positional table (n_ctx={cfg.n_ctx}); generate at most "
            f"{cfg.n_ctx - tokens.shape[1]} tokens"
        )
    edits = (edits,) if isinstance(edits, Edit) else tuple(edits or ())
    check_edits(edits, cfg, n_pos=n_slots)
    for i, edit in enumerate(edits):
        _check_value_per_position(edit, i)

    tokens, mask = _left_padded(np.asarray(tokens), mask, pad_id)
    key = jax.random.PRNGKey(0) if key is None else key
    out_tokens, n_done = _generate(
        params,
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(mask),
        key,
        edits,
        jnp.float32(max(temperature, 1e-30)),
        jnp.float32(1.0 if top_p is None else top_p),
        -1 if eos_id is None else int(eos_id),
        int(pad_id),
        cfg=cfg,
        n_new=n_new,
        greedy=temperature == 0,
        top_k=top_k,
    )
    new = np.asarray(out_tokens)
    new_mask = np.ones_like(new, bool)
    if eos_id is not None:  # real up to and including the first EOS
        after = np.cumsum(new == eos_id, axis=1) - (new == eos_id)
        new_mask = after == 0
    new = np.where(new_mask, new, pad_id)
    return GenerationResult(
        tokens=np.concatenate([tokens, new], axis=1),
        mask=np.concatenate([mask, new_mask], axis=1),
        new_tokens=new,
        n_prompt=tokens.shape[1],
    )


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_value_per_position(edit: Edit, index: int) -> None:
    axes = SITES[edit.site][1]
    if not any(a in ("pos", "query_pos") for a in axes):
        return
    value = np.shape(edit.value)
    if edit.value_has_layer_axis:
        value = value[1:]
    axis = next(i for i, a in enumerate(axes) if a in ("pos", "query_pos"))
    axis -= len(axes) - len(value)  # values broadcast from the right
    if axis >= 0 and value[axis] != 1:
        raise ValueError(
            f"edits[{index}] at {edit.site!r} has a value laid out over {value[axis]} "
            "positions; during generation give one value for every position (e.g. a "
            "[d_model] vector)"
        )


def _left_padded(tokens: np.ndarray, mask, pad_id: int):
    """The batch re-padded on the left, `(tokens, mask)` (unchanged when already)."""
    if mask is None:
        return tokens, np.ones(tokens.shape, bool)
    if mask[:, -1].all():
        return tokens, mask
    return pad_sequences([row[keep] for row, keep in zip(tokens, mask)], pad_id, "left")


def _choose(logits, key, temperature, top_p, greedy: bool, top_k):
    """Next tokens `[batch]` from the last position's logits `[batch, vocab]`."""
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    # nucleus: keep the most likely tokens until their probability reaches top_p (the
    # token that crosses it included); top_p = 1 keeps everything
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = before >= top_p
    drop = (
        jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    )
    logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "n_new", "greedy", "top_k"))
def _generate(
    params,
    tokens,
    mask,
    key,
    edits,
    temperature,
    top_p,
    eos_id,
    pad_id,
    *,
    cfg,
    n_new,
    greedy,
    top_k,
):
    B, P = tokens.shape
    S = P + n_new
    slots_valid = jnp.concatenate([mask, jnp.ones((B, n_new), bool)], axis=1)
    dtype = jnp.dtype(cfg.activation_dtype)
    shape = (cfg.n_layers, B, S, cfg.n_kv_heads, cfg.d_head)
    cache = (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    capture = ("k", "v") if cfg.n_layers else ()

    def step(new_tokens, cache, offset):
        logits, acts = run(
            params,
            new_tokens,
            cfg,
            capture=capture,
            edits=edits,
            mask=slots_valid,
            cache=(*cache, offset),
        )
        if cfg.n_layers:
            cache = tuple(
                jax.lax.dynamic_update_slice(c, acts[n].astype(c.dtype), (0, 0, offset, 0, 0))
                for c, n in zip(cache, capture)
            )
        return logits[:, -1], cache

    last, cache = step(tokens, cache, 0)
    out = jnp.full((B, n_new), pad_id, jnp.int32)
    done = jnp.zeros((B,), bool)

    def cond(state):
        i, _, _, _, done = state
        return (i < n_new) & ~done.all()

    def body(state):
        i, cache, last, out, done = state
        chosen = _choose(last, jax.random.fold_in(key, i), temperature, top_p, greedy, top_k)
        chosen = jnp.where(done, pad_id, chosen)
        out = out.at[:, i].set(chosen)
        done = done | (chosen == eos_id)
        # the last step's token needs no forward pass; run it anyway inside the loop only
        # when another token follows
        last, cache = jax.lax.cond(
            i + 1 < n_new,
            lambda: step(chosen[:, None], cache, P + i),
            lambda: (last, cache),
        )
        return i + 1, cache, last, out, done

    _, _, _, out, done = jax.lax.while_loop(cond, body, (0, cache, last, out, done))
    return out, done


def greedy_next_tokens(
    params, tokens, cfg, *, edits=(), mask=None, batch_size: int = 256
) -> np.ndarray:
    """The most likely next token after each prompt: `ids [prompt]` (numpy), from
    `tokens [prompt, pos]` (`mask`: padding, as in `forward`; each prompt is read at its
    own last real token), run `batch_size` prompts at a time (the logits of a large
    vocabulary are big). `edits` apply to every run, as in `forward`."""
    tokens = np.asarray(tokens)
    batch_size = _positive_int(batch_size, "batch_size")
    if tokens.ndim != 2 or len(tokens) == 0:
        raise ValueError(
            f"tokens must be a non-empty [prompt, pos] array, got shape {tokens.shape}"
        )
    mask = check_mask(mask, tokens)
    last = np.full(len(tokens), tokens.shape[1] - 1) if mask is None else last_token_index(mask)
    out = []
    for i in range(0, len(tokens), batch_size):
        rows = slice(i, i + batch_size)
        batch_mask = None if mask is None else mask[rows]
        logits = forward(params, tokens[rows], cfg, edits=edits, mask=batch_mask)
        at = jnp.take_along_axis(logits, jnp.asarray(last[rows])[:, None, None], axis=1)
        out.append(np.asarray(at[:, 0].argmax(-1)))
    return np.concatenate(out)
