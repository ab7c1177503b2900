"""Parameters as plain pytrees with the names researchers know.

```
params = {
  "W_E":   [vocab, d_model]
  "W_pos": [n_ctx, d_model]                     (learned positions only)
  "W_U":   [d_model, vocab]                     (absent when embeddings are tied: W_E.T)
  "b_U":   [vocab]                              (use_unembed_bias)
  "ln_final_w", "ln_final_b": [d_model]         (final norm; _b for LayerNorm only)
  "blocks": {                                   (every leaf has a leading `layer` axis)
    "W_Q": [layer, head, d_model, d_head]     "b_Q": [layer, head, d_head]
    "W_K": [layer, kv_head, d_model, d_head]  "b_K": [layer, kv_head, d_head]
    "W_V": [layer, kv_head, d_model, d_head]  "b_V": [layer, kv_head, d_head]
    "W_O": [layer, head, d_head, d_model]     "b_O": [layer, d_model]  (has_attn_out_bias)
    "ln1_w", "ln1_b", "ln2_w", "ln2_b": [layer, d_model]        pre-attention / pre-MLP
    "ln1_post_w", "ln2_post_w": [layer, d_model]                 Gemma 2/3 post-norms
    "q_norm_w", "k_norm_w": [layer, d_head]                      Gemma 3 q/k norms
    "W_in": [layer, d_model, d_mlp]  "b_in": [layer, d_mlp]      (linear branch if gated)
    "W_gate": [layer, d_model, d_mlp] "b_gate": [layer, d_mlp]   (activated branch, gated)
    "W_out": [layer, d_mlp, d_model] "b_out": [layer, d_model]
    "ln_mlp_w", "ln_mlp_b": [layer, d_mlp]                       SoLU's LayerNorm
  }
}
```
Norm weights are stored as the checkpoint stores them: with `norm_weight_offset=1`
(Gemma) the effective multiplier is `1 + w`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig

Params = dict


def param_shapes(cfg: ModelConfig) -> dict:
    """The exact pytree of shapes `init_params` returns and the forward pass expects."""
    L, D, H, K, E = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    has_norm = cfg.normalization != "none"
    layernorm = cfg.normalization == "layernorm"
    shapes: dict = {"W_E": (cfg.d_vocab, D)}
    if cfg.positional == "learned":
        shapes["W_pos"] = (cfg.n_ctx, D)
    if not cfg.tied_embeddings:
        shapes["W_U"] = (D, cfg.d_vocab)
    if cfg.use_unembed_bias:
        shapes["b_U"] = (cfg.d_vocab,)
    if cfg.has_final_norm:
        shapes["ln_final_w"] = (D,)
        if layernorm:
            shapes["ln_final_b"] = (D,)

    blocks = {
        "W_Q": (L, H, D, E),
        "W_K": (L, K, D, E),
        "W_V": (L, K, D, E),
        "W_O": (L, H, E, D),
    }
    if cfg.use_attn_bias:
        blocks.update(b_Q=(L, H, E), b_K=(L, K, E), b_V=(L, K, E))
    if cfg.has_attn_out_bias:
        blocks["b_O"] = (L, D)
    norm_names = []
    if has_norm:
        norm_names.append("ln1")
        if not cfg.attn_only:
            norm_names.append("ln2")
    for name in norm_names:
        blocks[f"{name}_w"] = (L, D)
        if layernorm:
            blocks[f"{name}_b"] = (L, D)
    if cfg.post_attn_norm:
        blocks["ln1_post_w"] = (L, D)
        if layernorm:
            blocks["ln1_post_b"] = (L, D)
    if cfg.qk_norm:
        blocks["q_norm_w"] = (L, E)
        blocks["k_norm_w"] = (L, E)
    if not cfg.attn_only:
        M = cfg.d_mlp
        blocks["W_in"] = (L, D, M)
        if cfg.gated_mlp:
            blocks["W_gate"] = (L, D, M)
        blocks["W_out"] = (L, M, D)
        if cfg.use_mlp_bias:
            blocks["b_in"] = (L, M)
            if cfg.gated_mlp:
                blocks["b_gate"] = (L, M)
            blocks["b_out"] = (L, D)
        if cfg.act_fn == "solu":
            blocks["ln_mlp_w"] = (L, M)
            blocks["ln_mlp_b"] = (L, M)
        if cfg.post_mlp_norm:
            blocks["ln2_post_w"] = (L, D)
            if layernorm:
                blocks["ln2_post_b"] = (L, D)
    shapes["blocks"] = blocks
    return shapes


def _is_norm_weight(name: str) -> bool:
    return name.startswith("ln") and name.endswith("_w") or name in ("q_norm_w", "k_norm_w")


def init_params(key: jax.Array, cfg: ModelConfig) -> Params:
    """Random parameters under which toy models learn induction.

    Embeddings and learned positions ~ N(0, 1) (N(0, 1/d_model) when the model scales
    its embeddings by sqrt(d_model), so the scaled embedding is ~ N(0, 1)); every weight
    matrix ~ N(0, 1/fan_in); biases 0; norm weights at their identity (1, or 0 with a
    `1 + w` offset). GPT-2's std 0.02 everywhere blocked the induction phase change in
    2-layer attention-only toys in small reproductions (see METHODS.md), hence fan-in.
    """
    shapes = param_shapes(cfg)
    dtype = jnp.dtype(cfg.dtype)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, shape), k in zip(leaves, keys):
        name = path[-1].key
        if _is_norm_weight(name):
            # SoLU's LayerNorm multiplies by w itself (no offset), so its identity is 1
            offset = 0.0 if name == "ln_mlp_w" else cfg.norm_weight_offset
            value = jnp.full(shape, 1.0 - offset, dtype)
        elif name.startswith("b_") or name.endswith("_b"):
            value = jnp.zeros(shape, dtype)
        elif name in ("W_E", "W_pos"):
            std = cfg.d_model**-0.5 if cfg.scale_embeddings else 1.0
            value = _draw(k, std, shape, dtype)
        else:
            # fan-in is the axis contracted by x @ W: second-to-last for every matrix here
            value = _draw(k, shape[-2] ** -0.5, shape, dtype)
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


DRAW_BLOCK = 1 << 23  # elements drawn at once: XLA's random bits hold several u32 copies


def _draw(key, std, shape: tuple[int, ...], dtype) -> jax.Array:
    """`std * N(0, 1)` of `shape` in `dtype`. A leaf of at most `DRAW_BLOCK` elements
    (every toy's) is drawn in float32 and cast, one operation at a time, as it always
    was (the same bits as earlier versions: compiled as one program, XLA's rounding of
    the scaling differed in the last bit). A larger one (a real-size embedding, a
    stacked MLP matrix) is drawn as equal consecutive blocks of its flattened elements,
    block i from `fold_in(key, i)`, each cast to `dtype` in the program that draws it:
    drawing 590M normals at once held ~4 u32/f32 arrays of that size (8 GiB) while the
    random bits were made, and a 16-bit model held a float32 copy of the leaf."""
    size = int(np.prod(shape))
    n_blocks = next(
        (n for n in range(-(-size // DRAW_BLOCK), 64 * (-(-size // DRAW_BLOCK))) if size % n == 0),
        None,
    )
    if size <= DRAW_BLOCK or n_blocks is None:  # (no even split: a large prime size)
        return (jax.random.normal(key, shape) * std).astype(dtype)
    return _normal_blocks(key, std, shape, dtype, n_blocks)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "n_blocks"))
def _normal_blocks(key, std, shape: tuple[int, ...], dtype, n_blocks: int) -> jax.Array:
    block = (int(np.prod(shape)) // n_blocks,)

    def draw(i):
        return (jax.random.normal(jax.random.fold_in(key, i), block) * std).astype(dtype)

    return jax.lax.map(draw, jnp.arange(n_blocks)).reshape(shape)


def check_params(params: Params, cfg: ModelConfig) -> None:
    """Raise a ValueError listing every missing, extra or mis-shaped parameter."""
    expected = param_shapes(cfg)
    problems = []

    def walk(exp: dict, got, prefix: str):
        if not isinstance(got, dict):
            problems.append(f"{prefix or 'params'} should be a dict, got {type(got).__name__}")
            return
        for name in sorted(set(exp) | set(got)):
            path = f"{prefix}{name}"
            if name not in got:
                problems.append(f"missing {path} {exp[name]}")
            elif name not in exp:
                problems.append(f"unexpected {path}")
            elif isinstance(exp[name], dict):
                walk(exp[name], got[name], path + ".")
            else:
                shape = tuple(np.shape(got[name]))
                if shape != tuple(exp[name]):
                    problems.append(f"{path} has shape {shape}, expected {tuple(exp[name])}")

    walk(expected, params, "")
    if problems:
        raise ValueError(
            f"params do not match the config ({cfg.name or 'unnamed'}): "
            + "; ".join(problems)
            + ". Build params with mechjax.init_params(key, cfg) or load them with the config "
            "they were saved with."
        )


# -- 16-bit weights computed in a wider dtype -------------------------------------------------
# XLA's CPU backend has no bfloat16 arithmetic. Before compiling, it rewrites bfloat16
# operations as float32 ones, slices and gathers included. Slicing one layer out of
# bfloat16 stacked weights therefore first converted *all* layers to float32: a float32
# copy of the whole model, and 4-6x slower.
#
# So weights that compute wider are handed to the compiled forward as their uint16 bits.
# `weight_bits` views a concrete array's bits without a copy; inside a trace a bitcast
# would be a copy. The forward slices and gathers the bits as integers and widens each
# slice only where it is used (`widen`).

BITS = jnp.uint16  # how the forward receives 16-bit float weights (`weight_bits`)
_BIG = 1 << 20  # leaves of at least this many elements are handed over as bits


def is_narrow(w, dtype) -> bool:
    """Whether `w` holds 16-bit floats that compute in the wider `dtype`."""
    w_dtype = jnp.dtype(w.dtype)
    return w_dtype.itemsize == 2 and jnp.issubdtype(w_dtype, jnp.floating) and w_dtype != dtype


def weight_bits(params: Params, cfg: ModelConfig) -> Params:
    """`params` for the compiled forward: on a CPU, the big 16-bit leaves that compute
    wider (`cfg.activation_dtype`), namely the blocks' weights, the embedding and the
    unembedding, as uint16 views of the same memory (no copy). Anything else comes back
    as it was: a traced array, an array sharded over several devices, another backend,
    float32 weights."""
    dtype = jnp.dtype(cfg.activation_dtype)
    if jax.default_backend() != "cpu" or dtype == jnp.dtype(cfg.dtype):
        return params

    def bits(w):
        if isinstance(w, jax.core.Tracer) or not is_narrow(w, dtype) or w.size < _BIG:
            return w
        if len(w.sharding.device_set) > 1:  # sharded over a mesh: keep it where it lies
            return w
        host = np.asarray(w)  # a view of the CPU buffer
        view = host.view(np.uint16)
        return jax.device_put(view) if view.ctypes.data % 64 == 0 else w

    out = {k: bits(v) if k in ("W_E", "W_U") else v for k, v in params.items()}
    out["blocks"] = {k: bits(v) for k, v in params["blocks"].items()}
    return out


def widen(w: jax.Array, cfg: ModelConfig) -> jax.Array:
    """A weight (or a slice or gather of one) in `cfg.activation_dtype`: uint16 bits
    (`weight_bits`) reinterpreted as `cfg.dtype` first. Exact."""
    dtype = jnp.dtype(cfg.activation_dtype)
    if w.dtype == BITS:
        w = jax.lax.bitcast_convert_type(w, jnp.dtype(cfg.dtype))
    return w.astype(dtype) if jnp.issubdtype(w.dtype, jnp.floating) else w


def unembedding(params: Params) -> jax.Array:
    """W_U [d_model, vocab] (W_E.T for tied embeddings)."""
    return params["W_U"] if "W_U" in params else params["W_E"].T


def per_query_head(w: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Key/value weights `[layer, kv_head, ...]` -> `[layer, head, ...]` (head h uses kv
    head h // group_size, the order in which the forward pass groups query heads)."""
    return jnp.repeat(w, cfg.group_size, axis=1) if cfg.group_size > 1 else w


def count_params(params: Params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
