"""Eigenvalues of the full OV and QK circuits, and the eigenvalue copying statistic read off them.

Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits", measure whether
a head copies by the eigenvalues lambda of its full OV circuit `W_E W_OV W_U`
`[vocab (source), vocab (output)]`: the statistic `Re(sum(lambda)) / sum(|lambda|)`
(`ov_eigenvalue_copying`; not Olsson et al.'s copying score, which is the head detector
`activations.copying.copying_scores`) lies in [-1, 1] and is positive when the circuit maps most tokens to themselves. The same
statistic on the full QK circuit `W_E W_QK W_E^T` asks whether tokens attend to copies of
themselves (METHODS.md "Circuits"). The circuits themselves are in `mechjax.circuits`.

The Gram route. The full OV circuit is `A B` with `A = W_E W_V [vocab, d_head]` and
`B = W_O W_U [d_head, vocab]`; its nonzero eigenvalues are those of the small
`B A = W_O (W_U W_E) W_V [d_head, d_head]` (Sylvester's identity, see
`mechjax.circuits.factored`). The `[d_model, d_model]` Gram matrix `G = W_U W_E` does not depend
on the head, so it is summed over the vocabulary once (`vocab_gram`, in chunks of rows) and
every head's core `W_O G W_V` is a d_model-sized product: no `[layer, head, vocab,
d_head]` factor is ever formed. For the QK circuit `G = W_E^T W_E` is symmetric and only
its upper triangle is computed (`upper_gram_layout`).

    full_ov_eigenvalues, full_qk_eigenvalues   complex [layer, head, d_head]
    ov_eigenvalue_copying, qk_eigenvalue_copying       [layer, head]
    eigenvalue_copying                        the score of any square FactoredMatrix

Weights are taken as stored, embedding times `cfg.embed_scale`, norms left out (call
`mechjax.circuits.fold_norms` first). The cores are computed on the default device (a GPU
if there is one) and their `eig` on the host CPU (`host_linalg.host_eigvals`), the
eigenvalues coming back on the weights' device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.config import ModelConfig
from ..model.params import Params, param_shapes, per_query_head
from .factored import FactoredMatrix
from .host_linalg import host_eigvals

# -- the embedding's Gram matrix ------------------------------------------------------------------

# Vocabulary rows per step of the Gram sum: a [16384, d_model] float32 slice (151 MB at
# Gemma's 2304) stays small next to the embedding itself; 8192-32768 timed alike here.
_GRAM_CHUNK = 16384
# The symmetric Gram's columns are halved while at least this wide (2304 -> 288-wide
# leaves, 56% of the full product's work); narrower products lose more matmul speed
# than the halving saves.
_GRAM_SPLIT = 512


def upper_gram_layout(lo: int, hi: int, split: int) -> list[tuple[int, int, int, int]]:
    """Column ranges `(r0, r1, c0, c1)` of the blocks `x[:, r0:r1]^T x[:, c0:c1]` that make
    up the part on and above the diagonal of the Gram matrix of columns `lo:hi` of x.

    With `x_lo, x_hi` the two column halves, the Gram matrix is
    `[[x_lo^T x_lo, x_lo^T x_hi], [x_hi^T x_lo, x_hi^T x_hi]]`: the upper off-diagonal
    block is computed once (the lower one is its transpose) and each diagonal block by the
    same rule, down to blocks narrower than `split`, computed whole. Depth k costs
    `1/2 + 1/2^(k+1)` of the full product.
    """
    if hi - lo < split:
        return [(lo, hi, lo, hi)]
    mid = (lo + hi) // 2
    return (
        [(lo, mid, mid, hi)] + upper_gram_layout(lo, mid, split) + upper_gram_layout(mid, hi, split)
    )


def vocab_gram(
    W_E: jax.Array, W_U: jax.Array | None, *, chunk: int = _GRAM_CHUNK, split: int = _GRAM_SPLIT
) -> jax.Array:
    """`W_U @ W_E` `[d_model, d_model]` in float32: W_E `[vocab, d_model]`, W_U
    `[d_model, vocab]`, or `W_U=None` for `W_E^T W_E` (tied embeddings; the QK circuits).

    The vocabulary is summed `chunk` rows at a time (only one float32 slice of the
    embedding is made at a time). `W_E^T W_E` is symmetric: only the blocks on and above
    its diagonal are computed (`upper_gram_layout`, columns halved while `split` wide or
    more), then mirrored.
    """
    vocab, d_model = W_E.shape
    f32 = jnp.float32
    layout = upper_gram_layout(0, d_model, split) if W_U is None else [(0, d_model, 0, d_model)]

    def add_chunk(start, size: int, sums: list) -> list:
        rows = jax.lax.dynamic_slice_in_dim(W_E, start, size, 0).astype(f32)  # [size, d_model]
        if W_U is None:
            blocks = [rows[:, r0:r1].T @ rows[:, c0:c1] for r0, r1, c0, c1 in layout]
        else:
            blocks = [jax.lax.dynamic_slice_in_dim(W_U, start, size, 1).astype(f32) @ rows]
        return [total + block for total, block in zip(sums, blocks)]

    sums = [jnp.zeros((r1 - r0, c1 - c0), f32) for r0, r1, c0, c1 in layout]
    n_full, rest = divmod(vocab, chunk)
    if n_full:
        sums = jax.lax.fori_loop(0, n_full, lambda i, acc: add_chunk(i * chunk, chunk, acc), sums)
    if rest:
        sums = add_chunk(n_full * chunk, rest, sums)
    gram = jnp.zeros((d_model, d_model), f32)
    for (r0, r1, c0, c1), block in zip(layout, sums):
        gram = gram.at[r0:r1, c0:c1].set(block)
    if W_U is None:  # mirror the upper triangle
        gram = jnp.triu(gram) + jnp.triu(gram, 1).T
    return gram


# -- eigenvalues of the full circuits -------------------------------------------------------------


def _check_circuit_weights(params: Params, cfg: ModelConfig, names: tuple, caller: str) -> None:
    """ValueError naming every weight a full-circuit function reads that is missing or
    mis-shaped for `cfg` (checked in Python, before any compiled code)."""
    expected = param_shapes(cfg)
    problems = []
    wanted = [("W_E", params, expected["W_E"])]
    if "W_U" in params:  # what unembedding(params) reads; tied embeddings have none
        wanted.append(("W_U", params, (cfg.d_model, cfg.d_vocab)))
    blocks = params.get("blocks", {})
    wanted += [(f"blocks.{n}", blocks, expected["blocks"][n]) for n in names]
    for path, store, shape in wanted:
        key = path.split(".")[-1]
        if key not in store:
            problems.append(f"missing {path} {shape}")
        elif tuple(np.shape(store[key])) != tuple(shape):
            problems.append(f"{path} has shape {tuple(np.shape(store[key]))}, expected {shape}")
    if problems:
        raise ValueError(
            f"{caller}: params do not match the config: {'; '.join(problems)}. Pass the "
            "params and config of the same model (mechjax.init_params(key, cfg), or the "
            "config they were loaded with)."
        )


def _no_layers(cfg: ModelConfig) -> jax.Array:
    return jnp.zeros((0, cfg.n_heads, cfg.d_head), jnp.complex64)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _full_ov_core(params: Params, cfg: ModelConfig) -> jax.Array:
    """`W_O (W_U W_E) W_V` `[layer, head, d_head, d_head]`, float32."""
    scale = cfg.embed_scale
    gram = vocab_gram(params["W_E"], params.get("W_U")) * scale  # W_U (W_E * scale)
    W_V = params["blocks"]["W_V"].astype(jnp.float32)
    W_O = params["blocks"]["W_O"].astype(jnp.float32)
    # G W_V per key/value head first (fewer than the query heads under GQA)
    gram_v = per_query_head(jnp.einsum("dm,lkme->lkde", gram, W_V), cfg)
    return jnp.einsum("lhed,lhdf->lhef", W_O, gram_v)  # [layer, head, d_head, d_head]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _full_qk_core(params: Params, cfg: ModelConfig) -> jax.Array:
    """`W_K^T (W_E^T W_E) W_Q` `[layer, head, d_head, d_head]`, float32."""
    scale = cfg.embed_scale
    gram = vocab_gram(params["W_E"], None) * (scale * scale)  # (W_E s)^T (W_E s)
    W_Q = params["blocks"]["W_Q"].astype(jnp.float32)
    W_K = params["blocks"]["W_K"].astype(jnp.float32)
    gram_k = per_query_head(jnp.einsum("dm,lkme->lkde", gram, W_K), cfg)
    # (G W_K)^T = W_K^T G, G being symmetric
    return jnp.einsum("lhde,lhdf->lhef", gram_k, W_Q)  # [layer, head, d_head, d_head]


def full_ov_eigenvalues(params: Params, cfg: ModelConfig) -> jax.Array:
    """Eigenvalues of every head's full OV circuit `W_E W_OV W_U`: complex
    `[layer, head, d_head]`, the same numbers as
    `mechjax.circuits.full_ov_circuit(params, cfg).eigenvalues`.

    That circuit is `A B` with `A = W_E W_V [vocab, d_head]`, `B = W_O W_U [d_head, vocab]`,
    and its nonzero eigenvalues are those of `B A = W_O (W_U W_E) W_V` (see
    `FactoredMatrix.eigenvalues`). The Gram matrix `G = W_U W_E [d_model, d_model]` is
    computed once for all layers and heads (vocab * d_model^2 multiply-adds; about half of
    that with tied embeddings, where G = W_E^T W_E is symmetric), so no
    `[layer, head, vocab, d_head]` factor is formed (at Gemma-2-2B widths those factors
    take GiBs and 4-7x the multiply-adds).

    As with `FactoredMatrix.eigenvalues`, these are the d_head eigenvalues of `B A`: the
    vocab x vocab circuit has them plus vocab - d_head zeros (for vocab < d_head it has
    vocab eigenvalues, and `B A` adds d_head - vocab zeros). The embedding is scaled by
    `cfg.embed_scale`; norms are left out (call `circuits.fold_norms` first). Computed in float32
    (bf16/fp16 weights are upcast; `eig` has no half-precision kernel). The Gram matrix
    and the cores are computed on the default device, `eig` on the host CPU
    (`host_linalg.host_eigvals`); the eigenvalues are returned on the cores' device.
    """
    _check_circuit_weights(params, cfg, ("W_V", "W_O"), "full_ov_eigenvalues")
    return host_eigvals(_full_ov_core(params, cfg)) if cfg.n_layers else _no_layers(cfg)


def full_qk_eigenvalues(params: Params, cfg: ModelConfig) -> jax.Array:
    """Eigenvalues of every head's full QK circuit `W_E W_QK W_E^T`: complex
    `[layer, head, d_head]`, as `mechjax.circuits.full_qk_circuit(params, cfg).eigenvalues`
    gives them.

    `B A = W_K^T (W_E^T W_E) W_Q` through the symmetric Gram matrix of the (scaled)
    embedding, computed once, as in `full_ov_eigenvalues` (which documents the zeros
    left out, the scaling, the dtype and where `eig` runs: the host CPU).
    """
    _check_circuit_weights(params, cfg, ("W_Q", "W_K"), "full_qk_eigenvalues")
    return host_eigvals(_full_qk_core(params, cfg)) if cfg.n_layers else _no_layers(cfg)


# -- copying scores from eigenvalues --------------------------------------------------------------


def _copying_from_eigenvalues(eig: jax.Array) -> jax.Array:
    """`Re(sum(lambda)) / sum(|lambda|)` over the last axis; 0 where every lambda is 0."""
    total = jnp.abs(eig).sum(-1)
    return jnp.where(total > 0, jnp.real(eig.sum(-1)) / jnp.where(total > 0, total, 1.0), 0.0)


def eigenvalue_copying(fm: FactoredMatrix) -> jax.Array:
    """`Re(sum(lambda)) / sum(|lambda|)` over the eigenvalues of each square matrix in `fm`
    `[...]`, in [-1, 1] (Elhage et al. 2021): positive when the circuit maps most inputs
    to themselves (copying). 0 for the zero matrix. `eig` runs on the host CPU
    (`FactoredMatrix.eigenvalues`)."""
    dtype = jnp.promote_types(fm.A.dtype, jnp.float32)  # eig has no bf16/fp16 kernel
    eig = FactoredMatrix(fm.A.astype(dtype), fm.B.astype(dtype)).eigenvalues
    return _copying_from_eigenvalues(eig)


def ov_eigenvalue_copying(params: Params, cfg: ModelConfig) -> jax.Array:
    """`eigenvalue_copying` of the full OV circuit `W_E W_OV W_U`: `[layer, head]`.
    Does the head raise the logit of the token it attends to? (From
    `full_ov_eigenvalues`: the Gram route, no vocab-sized factor.)"""
    return _copying_from_eigenvalues(full_ov_eigenvalues(params, cfg))


def qk_eigenvalue_copying(params: Params, cfg: ModelConfig) -> jax.Array:
    """`eigenvalue_copying` of the full QK circuit `W_E W_QK W_E^T`: `[layer, head]`.
    Do tokens attend to copies of themselves? (From `full_qk_eigenvalues`.)"""
    return _copying_from_eigenvalues(full_qk_eigenvalues(params, cfg))
