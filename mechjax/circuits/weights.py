"""Circuits read off the weights: QK / OV circuits, full token and positional circuits, the
direct path, norm folding and composition scores. The full circuits' eigenvalues and the
eigenvalue copying statistics are in `eigen.py`; the package `mechjax.circuits` exports both.

Definitions from Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"
(see also METHODS.md "Circuits"), in mechjax's row-vector convention (`x @ W`):

    W_QK^h = W_Q^h W_K^h^T   [d_model, d_model]   score(x_q, x_k) = x_q W_QK x_k^T
    W_OV^h = W_V^h W_O^h     [d_model, d_model]   write = sum_k a_k x_k W_OV
    full QK = W_E W_QK W_E^T [vocab (query), vocab (key)]
    full OV = W_E W_OV W_U   [vocab (source), vocab (output)]
    direct path = W_E W_U    [vocab, vocab]

Every circuit is a `FactoredMatrix` with leading axes `[layer, head]`, never a dense
vocab x vocab array. With grouped-query attention query head h uses key/value head
`h // group_size` (`cfg.group_size` query heads per kv head).

These are the weights as stored; they leave out biases, the attention scale
(`cfg.attn_scale`), soft-capping, every norm (Gemma 3's per-head q/k norms included: they
rescale q and k by data-dependent factors) and, for RoPE models, the rotation (the token
QK circuit is the score at relative offset 0; `positional_qk_circuit` gives the rest). Call `fold_norms` first to include the
norm weights and LayerNorm centering (what it can and cannot fold is listed there). The
embedding is `W_E * cfg.embed_scale` (Gemma multiplies it by sqrt(d_model)).

Correspondence with TransformerLens: `qk_circuit` / `ov_circuit` are TL's `model.QK` /
`model.OV` (`W_Q W_K^T`, `W_V W_O`), and `composition_scores(kind)` equals
`model.all_composition_scores(kind)` (TL's `left = OV`, `right = QK`, `QK.T` or `OV`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model import layers
from ..model.config import ModelConfig
from ..model.params import Params, per_query_head, unembedding
from .factored import FactoredMatrix

COMPOSITION_KINDS = ("Q", "K", "V")


# -- the circuits -------------------------------------------------------------------------------


def _embedding(params: Params, cfg: ModelConfig) -> jax.Array:
    return params["W_E"] * jnp.asarray(cfg.embed_scale, params["W_E"].dtype)


def qk_circuit(params: Params, cfg: ModelConfig) -> FactoredMatrix:
    """`W_Q W_K^T` `[layer, head, d_model (query side), d_model (key side)]`, inner d_head."""
    W_K = per_query_head(params["blocks"]["W_K"], cfg)
    return FactoredMatrix(params["blocks"]["W_Q"], jnp.swapaxes(W_K, -1, -2))


def ov_circuit(params: Params, cfg: ModelConfig) -> FactoredMatrix:
    """`W_V W_O` `[layer, head, d_model (source), d_model (write)]`, inner d_head.

    Gemma 2/3's post-attention norm is left out: it multiplies each write by
    `s * (offset + w_post)` with `s` set by the data (it cannot be folded, see `fold_norms`).
    """
    return FactoredMatrix(per_query_head(params["blocks"]["W_V"], cfg), params["blocks"]["W_O"])


def full_qk_circuit(params: Params, cfg: ModelConfig) -> FactoredMatrix:
    """`W_E W_QK W_E^T` `[layer, head, vocab (query token), vocab (key token)]`."""
    W_E = _embedding(params, cfg)
    return W_E @ qk_circuit(params, cfg) @ W_E.T


def full_ov_circuit(params: Params, cfg: ModelConfig) -> FactoredMatrix:
    """`W_E W_OV W_U` `[layer, head, vocab (attended token), vocab (output logit)]`."""
    return _embedding(params, cfg) @ ov_circuit(params, cfg) @ unembedding(params)


def direct_path(params: Params, cfg: ModelConfig) -> FactoredMatrix:
    """`W_E W_U` `[vocab (input token), vocab (output logit)]`, inner d_model: a
    zero-layer model's logits (bigram statistics)."""
    return FactoredMatrix(_embedding(params, cfg), unembedding(params))


def positional_qk_circuit(
    params: Params, cfg: ModelConfig, *, query=None, key=None, n_offsets: int | None = None
):
    """How attention scores depend on position alone.

    * Learned positions: `W_pos W_QK W_pos^T`, a `FactoredMatrix`
      `[layer, head, n_ctx (query pos), n_ctx (key pos)]` (`query`/`key` not allowed).
    * RoPE: positions only rotate q and k, so the score of a query at position p + offset
      and a key at p depends on the offset alone. Returns an array
      `[layer, head, offset]` for offsets `0 .. n_offsets - 1` (default `cfg.n_ctx`):
      - with `query` and `key` (`[d_model]` vectors, as W_Q and W_K read them, i.e.
        after the pre-attention norm): `rope(query W_Q, offset) . rope(key W_K, 0)`;
      - without them: the expectation of that score when query = key = x, x uniform on
        the unit sphere of d_model, which is `tr(W_Q R_offset W_K^T) / d_model`
        (`E[x^T M x] = tr(M) / d_model`): how much a head attends to a copy of the
        query's own vector as a function of distance.
      Scores exclude `cfg.attn_scale` and soft-capping, as every circuit here does. Local
      layers use their own RoPE base, as in the forward pass.
    """
    if cfg.positional == "learned":
        if query is not None or key is not None or n_offsets is not None:
            raise ValueError(
                "positional_qk_circuit: query/key/n_offsets apply to RoPE models only; a "
                "learned-position model returns W_pos W_QK W_pos^T over all n_ctx positions"
            )
        W_pos = params["W_pos"]
        return W_pos @ qk_circuit(params, cfg) @ W_pos.T
    if cfg.positional != "rope":
        raise ValueError(
            f"positional_qk_circuit: positional={cfg.positional!r} has no positional "
            "information in its weights (needs 'learned' or 'rope')"
        )
    if (query is None) != (key is None):
        raise ValueError("positional_qk_circuit: give both query and key vectors, or neither")
    n_offsets = cfg.n_ctx if n_offsets is None else n_offsets
    if int(n_offsets) != n_offsets or n_offsets < 1:
        raise ValueError(f"positional_qk_circuit: n_offsets must be >= 1, got {n_offsets}")
    for name, vec in (("query", query), ("key", key)):
        if vec is not None and np.shape(vec) != (cfg.d_model,):
            raise ValueError(
                f"positional_qk_circuit: {name} must be a [d_model={cfg.d_model}] vector, "
                f"got shape {np.shape(vec)}"
            )
    return _rope_offset_scores(params, cfg, query, key, int(n_offsets))


@functools.partial(jax.jit, static_argnames=("cfg", "n_offsets"))
def _rope_offset_scores(params, cfg: ModelConfig, query, key, n_offsets: int) -> jax.Array:
    W_Q = params["blocks"]["W_Q"].astype(jnp.float32)  # [layer, head, d_model, d_head]
    W_K = per_query_head(params["blocks"]["W_K"], cfg).astype(jnp.float32)
    if query is None:
        # E_x[q(x) (x) k(x)] over unit x is the mean over the basis vectors e_d
        q, k = W_Q, W_K  # [layer, head, d_model (basis vector), d_head]
    else:
        q = jnp.einsum("d,lhde->lhe", jnp.asarray(query, jnp.float32), W_Q)[:, :, None]
        k = jnp.einsum("d,lhde->lhe", jnp.asarray(key, jnp.float32), W_K)[:, :, None]
    # RoPE rotates by x*cos + rotate_half(x)*sin; apply_rope at angle pi/2 (cos 0, sin 1)
    # is rotate_half itself, so the score at any offset is cos . (q*k) + sin . (rh(q)*k)
    # Only the first rope_dim dims rotate (partial rotary, GPT-NeoX); the rest add a
    # constant to every offset
    dim = cfg.rope_dim
    rotated_q = layers.apply_rope(q, jnp.zeros((1, dim)), jnp.ones((1, dim)))[..., :dim]
    on_cos = (q * k)[..., :dim].mean(axis=2)  # [layer, head, rope_dim]
    on_sin = (rotated_q * k[..., :dim]).mean(axis=2)
    unrotated = (q * k)[..., dim:].mean(axis=2).sum(axis=-1)  # [layer, head]
    cos, sin = layers.rope_tables(cfg, n_offsets)  # [layer, offset, rope_dim]
    rotated = jnp.einsum("lpe,lhe->lhp", cos, on_cos) + jnp.einsum("lpe,lhe->lhp", sin, on_sin)
    return rotated + unrotated[..., None]


# -- folding norms into the weights ---------------------------------------------------------------


def _fold_reader(W, multiplier, bias, center: bool):
    """Fold a norm `y = center(x) * s * multiplier + bias` into the matrix `W [..., d, out]`
    that reads y: returns `(W', b)` with `y W = (center(x) * s) W' + b`.

    `W' = (I - 11^T/d) diag(multiplier) W` (centering folded in: subtract the mean over
    the d axis), `b = bias W` (None without a bias). `multiplier`, `bias`: `[..., d]`.
    """
    folded = multiplier[..., :, None] * W
    if center:
        folded = folded - folded.mean(axis=-2, keepdims=True)
    added = None if bias is None else (bias[..., :, None] * W).sum(axis=-2)
    return folded, added


def fold_norms(params: Params, cfg: ModelConfig) -> tuple[Params, ModelConfig]:
    """Fold norm weights, biases and LayerNorm centering into the matrices that read them.

    Returns `(params', cfg')` computing exactly the same function (`forward(params', ...,
    cfg') == forward(params, ..., cfg)` to float rounding), with every folded norm left at
    its identity (weight `1 - norm_weight_offset`, bias 0), so circuits of `params'`
    include the norm weights. A norm `y = center(x) * s(x) * (offset + w) + b` read by `W`
    gives `y W = (center(x) s(x)) W' + b W` with `W' = (I - 11^T/d) diag(offset + w) W`:

    * ln1 -> rows of W_Q, W_K, W_V; ln1_b W -> b_Q, b_K, b_V;
    * ln2 -> rows of W_in (and W_gate); ln2_b W_in -> b_in;
    * SoLU's LayerNorm (ln_mlp) -> rows of W_out; ln_mlp_b W_out -> b_out;
    * ln_final -> rows of W_U; ln_final_b W_U -> b_U. Tied embeddings are untied
      (`cfg'.tied_embeddings = False`, a new `W_U`).

    Centring (LayerNorm only) is folded into the *reading* weights (their columns get
    zero mean over d_model), so the residual stream itself is unchanged; the forward pass
    still centres (now a no-op on what the weights see) and the data-dependent scale
    `s(x)` stays in the model. Biases that had nowhere to go are created: `cfg'` may
    switch on `use_attn_bias` / `use_mlp_bias` / `use_unembed_bias` (new biases are the
    folded terms, others 0).

    Not folded (left as they are): Gemma 2/3 post-attention / post-MLP norms and q/k norms
    (their scale is computed from the weights' own output, so multiplying those weights
    would change it); ln2 of a *gated* MLP under LayerNorm (the gate has no bias to take
    `ln2_b W_gate`); `normalization="none"` (nothing to fold).
    """
    if cfg.normalization == "none":
        return params, cfg
    fold = _NormFolder(cfg)
    params = dict(params)
    blocks = dict(params["blocks"])
    if cfg.n_layers:
        fold.attention_norm(blocks)
        if not cfg.attn_only:
            fold.mlp_norms(blocks)
    params["blocks"] = blocks
    if cfg.has_final_norm:
        fold.final_norm(params)
    return params, cfg.replace(**fold.changes) if fold.changes else cfg


class _NormFolder:
    """The steps of `fold_norms`, one per norm, sharing the config changes they make."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.center = cfg.normalization == "layernorm"
        self.identity = 1.0 - cfg.norm_weight_offset
        self.changes: dict = {}

    def multiplier(self, w):
        return self.cfg.norm_weight_offset + w.astype(jnp.float32)

    def reset(self, store, name):
        store[f"{name}_w"] = jnp.full_like(store[f"{name}_w"], self.identity)
        if f"{name}_b" in store:
            store[f"{name}_b"] = jnp.zeros_like(store[f"{name}_b"])

    def add_bias(self, store, name, value, dtype, enable: str):
        if name in store:
            store[name] = (store[name].astype(jnp.float32) + value).astype(dtype)
        else:  # the config had no such bias: create them all, the folded one non-zero
            store[name] = value.astype(dtype)
            self.changes[enable] = True

    def attention_norm(self, blocks) -> None:
        """ln1 -> W_Q, W_K, W_V (per-layer vectors broadcast over heads); ln1_b -> b_Q/K/V."""
        cfg, dtype = self.cfg, blocks["W_Q"].dtype
        mult = self.multiplier(blocks["ln1_w"])[:, None, :]  # [layer, 1, d_model]
        bias = _f32(blocks.get("ln1_b"))
        bias = None if bias is None else bias[:, None, :]
        for name in ("Q", "K", "V"):
            W, b = _fold_reader(_f32(blocks[f"W_{name}"]), mult, bias, self.center)
            blocks[f"W_{name}"] = W.astype(dtype)
            if b is not None:
                self.add_bias(blocks, f"b_{name}", b, dtype, "use_attn_bias")
        if bias is not None and not cfg.use_attn_bias and cfg.use_attn_out_bias is None:
            # switching use_attn_bias on also brings b_O (has_attn_out_bias follows it)
            blocks["b_O"] = jnp.zeros((cfg.n_layers, cfg.d_model), dtype)
        self.reset(blocks, "ln1")

    def mlp_norms(self, blocks) -> None:
        """ln2 -> W_in (and W_gate), ln2_b -> b_in; SoLU's ln_mlp -> W_out, b_out."""
        cfg, dtype = self.cfg, blocks["W_Q"].dtype
        created = False
        if not (cfg.gated_mlp and "ln2_b" in blocks):  # the gate has no bias to take ln2_b
            mult, bias = self.multiplier(blocks["ln2_w"]), _f32(blocks.get("ln2_b"))
            for name in ("W_in", "W_gate"):
                if name not in blocks:
                    continue
                W, b = _fold_reader(_f32(blocks[name]), mult, bias, self.center)
                blocks[name] = W.astype(dtype)
                if b is not None and name == "W_in":
                    created |= "b_in" not in blocks
                    self.add_bias(blocks, "b_in", b, dtype, "use_mlp_bias")
            self.reset(blocks, "ln2")
        if cfg.act_fn == "solu":  # SoLU's own LayerNorm (no offset) -> W_out
            W, b = _fold_reader(
                _f32(blocks["W_out"]), _f32(blocks["ln_mlp_w"]), _f32(blocks["ln_mlp_b"]), True
            )
            blocks["W_out"] = W.astype(dtype)
            created |= "b_out" not in blocks
            self.add_bias(blocks, "b_out", b, dtype, "use_mlp_bias")
            blocks["ln_mlp_w"] = jnp.ones_like(blocks["ln_mlp_w"])
            blocks["ln_mlp_b"] = jnp.zeros_like(blocks["ln_mlp_b"])
        if created:  # use_mlp_bias needs both b_in and b_out
            blocks.setdefault("b_in", jnp.zeros((cfg.n_layers, cfg.d_mlp), dtype))
            blocks.setdefault("b_out", jnp.zeros((cfg.n_layers, cfg.d_model), dtype))

    def final_norm(self, params) -> None:
        """ln_final -> W_U (tied embeddings are untied), ln_final_b W_U -> b_U."""
        W_U = unembedding(params)
        mult, bias = self.multiplier(params["ln_final_w"]), _f32(params.get("ln_final_b"))
        W, b = _fold_reader(_f32(W_U), mult, bias, self.center)
        params["W_U"] = W.astype(W_U.dtype)
        if self.cfg.tied_embeddings:
            self.changes["tied_embeddings"] = False
        if b is not None:
            self.add_bias(params, "b_U", b, W_U.dtype, "use_unembed_bias")
        self.reset(params, "ln_final")


def _f32(x):
    return None if x is None else x.astype(jnp.float32)


# -- composition -------------------------------------------------------------------------------------


def _right_circuit(params: Params, cfg: ModelConfig, kind: str) -> FactoredMatrix:
    """The later head's matrix that reads the earlier head's write, in row convention:
    Q: the query side of W_QK; K: its key side (W_QK^T); V: W_OV."""
    if kind == "Q":
        return qk_circuit(params, cfg)
    if kind == "K":
        return qk_circuit(params, cfg).T
    return ov_circuit(params, cfg)


def _grams(fm: FactoredMatrix) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(A^T A [..., k, k], B B^T [..., k, k], ||A B||_F [...])` of `fm = A B`.

    With them a product's Frobenius norm needs only d_head-sized matrices:
    `||A_L B_L A_R B_R||^2 = tr(A_L^T A_L M B_R B_R^T M^T)`, `M = B_L A_R` (see
    `_product_norms`), and `||A B||^2 = sum(A^T A * B B^T)` (both symmetric)."""
    a_gram = jnp.einsum("...mi,...mj->...ij", fm.A, fm.A)
    b_gram = jnp.einsum("...in,...jn->...ij", fm.B, fm.B)
    return a_gram, b_gram, jnp.sqrt(jnp.sum(a_gram * b_gram, axis=(-2, -1)))


def _product_norms(left_B, left_A_gram, right_A, right_B_gram) -> jax.Array:
    """`||L R||_F` for `L = A_L B_L`, `R = A_R B_R` (leading axes broadcast), from
    `B_L [..., k, d]`, `A_L^T A_L [..., k, k]`, `A_R [..., d, k]`, `B_R B_R^T [..., k, k]`.

    The trace form costs one `[k, d] @ [d, k]` product and two `k x k` products per pair;
    no QR (which LAPACK runs at ~9 GFLOP/s on these tall matrices). In float32 it agrees
    with the QR-collapsed route and TransformerLens to ~1e-8 on random and decaying-
    spectrum weights (the error bound is relative to `||A_L|| ||M|| ||B_R||`, not `||L R||`)."""
    M = left_B @ right_A
    total = jnp.sum((left_A_gram @ M) * (M @ right_B_gram), axis=(-2, -1))
    return jnp.sqrt(jnp.maximum(total, 0.0))


def _pair_scores(left, right) -> jax.Array:
    """Composition scores `||L_a R_b|| / (||L_a|| ||R_b||)` for all pairs `[a, b]`, from
    `(B_L [a, k, d], A_L^T A_L [a, k, k], ||L|| [a])` and
    `(A_R [b, d, k], B_R B_R^T [b, k, k], ||R|| [b])`. Looped over chunks of `a` so
    memory stays near 2^24 floats for large models."""
    left_B, left_gram, left_norm = left
    right_A, right_gram, right_norm = right
    k = left_B.shape[-2]
    chunk = max(1, min(left_B.shape[0], 2**24 // max(1, 3 * right_A.shape[0] * k * k)))

    def one(x):  # one left matrix against every right one
        return _product_norms(x[0][None], x[1][None], right_A, right_gram)

    num = jax.lax.map(one, (left_B, left_gram), batch_size=chunk)
    return num / (left_norm[:, None] * right_norm[None, :])


def _random_factors(cfg: ModelConfig, seed: int, n_samples: int) -> tuple[np.ndarray, ...]:
    """Gaussian stand-ins for (W_V, W_O) of an earlier head and the two factors of a later
    head's matrix: `[n_samples, d_model, d_head]`, `[n_samples, d_head, d_model]` (x2).
    Drawn with numpy (jax's threefry takes seconds to compile on a busy CPU)."""
    rng = np.random.default_rng(seed)
    D, E = cfg.d_model, cfg.d_head
    shapes = ((D, E), (E, D), (D, E), (E, D))
    return tuple(rng.standard_normal((n_samples, *shape), dtype=np.float32) for shape in shapes)


def _mean_random_score(factors) -> jax.Array:
    left = FactoredMatrix(factors[0], factors[1])
    right = FactoredMatrix(factors[2], factors[3])
    (left_A_gram, _, left_norm), (_, right_B_gram, right_norm) = _grams(left), _grams(right)
    num = _product_norms(left.B, left_A_gram, right.A, right_B_gram)
    return jnp.mean(num / (left_norm * right_norm))


_mean_random_score_jit = jax.jit(_mean_random_score)


def random_composition_baseline(cfg: ModelConfig, *, seed: int = 0, n_samples: int = 200):
    """Mean composition score of random matrices with a head's shapes: `||X Y|| / (||X|| ||Y||)`
    for `X = V O`, `Y = A B` with i.i.d. standard Gaussian factors `V, A [d_model, d_head]`,
    `O, B [d_head, d_model]`, over `n_samples` draws (numpy, from `seed`). A scalar, the
    same for Q, K and V, whose matrices have the same shapes; the score is scale-free, so
    the factors' scale does not matter."""
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return _mean_random_score_jit(_random_factors(cfg, seed, int(n_samples)))


@functools.partial(jax.jit, static_argnames=("cfg", "kind"))
def _composition(params, random_factors, cfg: ModelConfig, kind: str):
    L, H = cfg.n_layers, cfg.n_heads
    # float32 factors; only the attention weights are needed
    names = ("W_Q", "W_K", "W_V", "W_O")
    params = {"blocks": {n: params["blocks"][n].astype(jnp.float32) for n in names}}
    left, right = ov_circuit(params, cfg), _right_circuit(params, cfg, kind)  # [layer, head]
    left_A_gram, _, left_norm = _grams(left)
    _, right_B_gram, right_norm = _grams(right)
    scores = jnp.zeros((L, H, L, H), jnp.float32)
    # only earlier -> later pairs: each later layer against the heads of the layers below
    # it (a quarter of all pairs at 2 layers, about half for deep models)
    for later in range(1, L):
        earlier = (left.B[:later], left_A_gram[:later], left_norm[:later])
        earlier = tuple(x.reshape((later * H,) + x.shape[2:]) for x in earlier)
        pair = _pair_scores(earlier, (right.A[later], right_B_gram[later], right_norm[later]))
        scores = scores.at[:later, :, later].set(pair.reshape(later, H, H))
    if random_factors is not None:
        later = jnp.arange(L)[:, None, None, None] < jnp.arange(L)[None, None, :, None]
        scores = jnp.where(later, scores - _mean_random_score(random_factors), 0.0)
    return scores


def composition_scores(
    params: Params,
    cfg: ModelConfig,
    kind: str = "K",
    *,
    baseline: bool = False,
    seed: int = 0,
    n_samples: int = 200,
) -> jax.Array:
    """Q-, K- or V-composition of every earlier head into every later head:
    `[layer1, head1, layer2, head2]`, non-zero only where layer1 < layer2.

    In row convention (the earlier head h1 writes `x W_OV^{h1}`, which the later head h2
    reads), with Frobenius norms:

        Q: ||W_OV^{h1} W_QK^{h2}||   / (||W_OV^{h1}|| ||W_QK^{h2}||)
        K: ||W_OV^{h1} W_QK^{h2 T}|| / (||W_OV^{h1}|| ||W_QK^{h2}||)
        V: ||W_OV^{h1} W_OV^{h2}||   / (||W_OV^{h1}|| ||W_OV^{h2}||)

    (Elhage et al. 2021 write the transposes, in column convention; the values are the
    same, and equal TransformerLens's `all_composition_scores`). `baseline=True` subtracts
    the mean score of random matrices of the same shapes (`random_composition_baseline`,
    `n_samples` Gaussian draws from numpy's generator seeded with `seed`), as the paper does; entries with
    layer1 >= layer2 stay 0. One jitted call computes the earlier -> later pairs from d_head-sized
    factors. Call `fold_norms` first to include norm weights.
    """
    if kind not in COMPOSITION_KINDS:
        raise ValueError(
            f"composition_scores: kind must be one of {COMPOSITION_KINDS}, got {kind!r}"
        )
    if baseline and (int(n_samples) != n_samples or n_samples < 1):
        raise ValueError(f"composition_scores: n_samples must be >= 1, got {n_samples}")
    if cfg.n_layers == 0:
        return jnp.zeros((0, cfg.n_heads, 0, cfg.n_heads), jnp.float32)
    factors = _random_factors(cfg, seed, int(n_samples)) if baseline else None
    return _composition(params, factors, cfg, kind)
