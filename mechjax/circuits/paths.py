"""Path decomposition of a 1- or 2-layer attention-only transformer's logits.

Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits", section on
two-layer attention-only transformers) expand the logits of such a model, with the
attention patterns held at their values on the input, into a sum over paths:

    logits = direct path                            x W_U
           + sum over heads h of every layer        A^h x W_OV^h W_U
           + sum over pairs h1 (layer 0) -> h2 (1)  A^{h2} A^{h1} x W_OV^{h1} W_OV^{h2} W_U
             (virtual heads: pattern A^{h2} A^{h1}, OV circuit W_OV^{h1} W_OV^{h2})

with `x [batch, pos, d_model]` the embedding (token plus learned position) in mechjax's
row-vector convention. `path_decomposition` returns each term's contribution to the
logits on a given input.

How norms are handled. A LayerNorm/RMSNorm is `N(r) = center(r) * s(r) * (offset + w) + b`
with a data-dependent scale `s(r)` per (batch, position). With `s` frozen at its value in
the run on this input (the pre-attention scale of every layer, `ln1_scale`, and the
final scale, `ln_final_scale`), `N` is linear in `r` plus the constant `b`, so the
expansion above stays *exact*: each norm on a path is its linear part with the run's
scale (`mechjax.model.layers.Norm.linear`), and every term sums to the logits to float
rounding. A term therefore means "what this path adds, given the norm scales and the
attention patterns the whole input produced", like direct logit attribution
(`mechjax.model.stream`). Models without norms need no freezing.

How biases are handled. Attention rows sum to one, so a constant added to every value
vector comes out unchanged: `A (1 c) = 1 c`. The constant parts of the model are
therefore their own terms, labelled by where they enter the residual stream, each
followed along every later path:

* "L{l} bias": layer l's constant write, `sum_h (b_ln1 W_V^h + b_V^h) W_O^h + b_O`
  (pre-attention norm bias and value bias through each head's OV, plus the output bias),
  through the final norm and `W_U`, and for layer 0 also through every layer-1 head;
* "final bias": the final norm's bias through `W_U`, plus `b_U` (`model.unembed.logit_bias`).

Term labels: "direct", "L{l}H{h}" (a single head reading the embedding), "L0H{a}>L1H{b}"
(a virtual head), the bias terms. With `split_positional=True` the embedding source is
split into token and position parts and every term that reads it appears twice, with
suffix ":embed" and ":pos_embed".

`k_composition_qk_circuit` expands a layer-1 head's QK circuit the same way along its
K-composition path (Elhage et al.'s account of induction heads): the key side reads a
layer-0 head's write.

Grouped-query attention reads each query head's value through its key/value group
(`mechjax.circuits.ov_circuit`). The decomposition is of the pre-soft-cap logits: a
final soft-cap (Gemma 2) applies to the sum and cannot be split. Models with MLPs, more
than two layers, or post-attention norms (whose scale depends on every head at once,
though it too could be frozen) are refused.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model import layers
from ..model.checks import check_config, check_token_ids
from ..model.config import ModelConfig
from ..model.params import Params, per_query_head, unembedding
from ..model.sites import capturable
from ..model.stream import Stream, apply_final_norm_linear
from ..model.transformer import run_with_stream
from ..model.unembed import logit_bias
from .factored import FactoredMatrix
from .weights import direct_path, fold_norms, ov_circuit, qk_circuit

KINDS = ("direct", "head", "virtual", "bias")
_CAPTURE = ("embed", "pos_embed", "pattern", "ln1_scale", "ln_final_scale")


@dataclasses.dataclass(frozen=True)
class PathDecompositionResult:
    """Labelled path terms.

    labels: one per term ("direct", "L0H3", "L0H3>L1H5", "L0 bias", ...)
    kinds:  one per term: "direct", "head", "virtual" or "bias"
    values: `[term, batch, pos, vocab]` logits, or `[term, batch, pos]` when a logit
            direction was given (`token_ids`, `minus_ids`)
    """

    labels: tuple[str, ...]
    kinds: tuple[str, ...]
    values: jax.Array

    def total(self) -> jax.Array:
        """The sum of every term: the (pre-soft-cap) logits or logit difference."""
        return self.values.sum(axis=0)

    def by_kind(self) -> dict[str, jax.Array]:
        """The sum of the terms of each kind present: `{kind: values without the term axis}`."""
        kinds = np.asarray(self.kinds)
        return {k: self.values[np.flatnonzero(kinds == k)].sum(0) for k in KINDS if k in kinds}

    def __getitem__(self, label: str) -> jax.Array:
        if label not in self.labels:
            raise KeyError(f"no path term {label!r}; terms are {list(self.labels)}")
        return self.values[self.labels.index(label)]


def _labels(cfg: ModelConfig, sources: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Labels and kinds in the order `_decompose` stacks its terms."""
    suffixes = [f":{s}" for s in sources] if len(sources) > 1 else [""]
    heads = [f"L{layer}H{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    virtual = []
    if cfg.n_layers == 2:
        virtual = [f"L0H{a}>L1H{b}" for a in range(cfg.n_heads) for b in range(cfg.n_heads)]
    labels, kinds = [], []
    for names, kind in ((["direct"], "direct"), (heads, "head"), (virtual, "virtual")):
        for name in names:
            for suffix in suffixes:
                labels.append(name + suffix)
                kinds.append(kind)
    biases = [f"L{layer} bias" for layer in range(cfg.n_layers)] + ["final bias"]
    return labels + biases, kinds + ["bias"] * len(biases)


@functools.partial(jax.jit, static_argnames=("cfg", "split_positional", "mode"))
def _decompose(params, stream: Stream, ids, minus, *, cfg, split_positional, mode):
    """Every term, stacked `[term, batch, pos, (vocab)]` (order of `_labels`).

    mode: "logits" (full vocab), "ids" (logit of `ids`, minus `minus`'s when given) or
    "mean" (logit of `ids` minus the mean logit)."""
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    params = jax.tree_util.tree_map(f32, params)
    blocks = params["blocks"]
    norm = layers.Norm(cfg)
    has_norm = cfg.normalization != "none"
    # ov.A = W_V [layer, head, d_model, d_head], ov.B = W_O [layer, head, d_head, d_model]
    ov = ov_circuit(params, cfg)
    pattern = f32(stream["pattern"])  # [layer, batch, head, q, k]

    def pre_norm(layer, r):  # the pre-attention norm's linear part, scale frozen
        return norm.linear(r, stream["ln1_scale"][layer], blocks["ln1_w"][layer]) if has_norm else r

    def heads(layer, r):
        """Each head's write from residual part r `[..., batch, pos, d_model]`, constants
        left out: `A^h N_lin(r) W_OV^h` -> `[..., head, batch, pos, d_model]`."""
        v = jnp.einsum("...bpd,hde->...hbpe", pre_norm(layer, r), ov.A[layer])
        z = jnp.einsum("bhqk,...hbke->...hbqe", pattern[layer], v)
        return jnp.einsum("...hbqe,hed->...hbqd", z, ov.B[layer])

    def constant_write(layer):
        """Layer's input-independent write `[d_model]`: norm bias and b_V through each
        head's OV, plus b_O (attention rows sum to 1, so constants pass unchanged)."""
        value_in = jnp.zeros((cfg.n_heads, cfg.d_head), jnp.float32)
        if "ln1_b" in blocks:
            value_in = value_in + jnp.einsum("d,hde->he", blocks["ln1_b"][layer], ov.A[layer])
        out = jnp.zeros((cfg.d_model,), jnp.float32)
        if cfg.use_attn_bias:
            value_in = value_in + per_query_head(blocks["b_V"], cfg)[layer]
        if cfg.has_attn_out_bias:
            out = out + blocks["b_O"][layer]
        return out + jnp.einsum("he,hed->d", value_in, ov.B[layer])

    W_U = unembedding(params)
    const = logit_bias(params, cfg).astype(jnp.float32)  # [vocab]
    if mode == "logits":
        direction = None
    else:
        direction = W_U.T[ids]  # [batch, pos, d_model]
        const = const[ids]
        if mode == "mean":
            direction = direction - W_U.mean(axis=1)
            const = const - logit_bias(params, cfg).astype(jnp.float32).mean()
        elif minus is not None:
            direction = direction - W_U.T[minus]
            const = const - logit_bias(params, cfg).astype(jnp.float32)[minus]

    def readout(w):  # residual write [..., batch, pos, d_model] -> its logits / logit diff
        normed = apply_final_norm_linear(w, stream, params, cfg)
        if direction is None:
            return jnp.einsum("...bpd,dv->...bpv", normed, W_U)
        return jnp.einsum("...bpd,bpd->...bp", normed, direction)

    embed = f32(stream["embed"])
    if cfg.positional == "learned":
        pos = f32(stream["pos_embed"])
        x = jnp.stack([embed, pos]) if split_positional else (embed + pos)[None]
    else:
        x = embed[None]  # [source, batch, pos, d_model]
    batch_pos = embed.shape[:2]

    def flat(t, n_lead):  # [source, a, (b,) batch, pos, ...] -> [(a, b,) source, ...]
        t = jnp.moveaxis(t, 0, n_lead)
        return t.reshape((-1,) + t.shape[n_lead + 1 :])

    terms = [readout(x)]  # direct
    biases = []
    if cfg.n_layers:
        w0 = heads(0, x)  # [source, head, batch, pos, d_model]
        terms.append(flat(readout(w0), 1))
        bias0 = jnp.broadcast_to(constant_write(0), batch_pos + (cfg.d_model,))
        if cfg.n_layers == 2:
            terms.append(flat(readout(heads(1, x)), 1))
            terms.append(flat(readout(heads(1, w0)), 2))  # [source, h0, h1, ...]
            bias0 = bias0 + heads(1, bias0).sum(axis=0)  # through every layer-1 head
            bias1 = jnp.broadcast_to(constant_write(1), batch_pos + (cfg.d_model,))
            biases.append(readout(bias1))
        biases.insert(0, readout(bias0))
    biases.append(jnp.broadcast_to(const, terms[0].shape[1:]))
    return jnp.concatenate(terms + [jnp.stack(biases)], axis=0)


def check_path_model(cfg: ModelConfig) -> None:
    """ValueError unless `cfg` is a model `path_decomposition` can expand exactly."""
    check_config(cfg)
    if not cfg.attn_only:
        raise ValueError(
            f"path decomposition needs an attention-only model (d_mlp=None); this one has "
            f"MLPs (d_mlp={cfg.d_mlp}). Use mechjax.model.stream.logit_attribution for per-"
            "component contributions of models with MLPs"
        )
    if cfg.n_layers not in (1, 2):
        raise ValueError(
            f"path decomposition covers 1- and 2-layer models (direct, single-head and "
            f"virtual-head paths); this model has {cfg.n_layers} layers"
        )
    if cfg.post_attn_norm:
        raise ValueError(
            "path decomposition does not expand post-attention norms (Gemma 2/3 style); "
            "use a model with post_attn_norm=False"
        )


def _check_ids(ids, name: str, cfg: ModelConfig, batch_pos: tuple[int, int]) -> np.ndarray:
    values = np.asarray(ids)
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids (an int or [batch, pos]), got {ids!r}")
    if values.ndim not in (0, 2) or (values.ndim == 2 and values.shape != batch_pos):
        raise ValueError(
            f"{name} must be an int or an array [batch, pos] = {list(batch_pos)}, "
            f"got shape {values.shape}"
        )
    check_token_ids(values, cfg, name)
    return np.broadcast_to(values, batch_pos).astype(np.int32)


def path_decomposition(
    params: Params,
    cfg: ModelConfig,
    tokens,
    *,
    token_ids=None,
    minus_ids=None,
    split_positional: bool = False,
) -> PathDecompositionResult:
    """Each path's contribution to the logits of `tokens [batch, pos]`.

    Runs the model once (attention patterns and norm scales of this input), then
    returns the terms of the module docstring, which sum exactly (to float32 rounding)
    to the pre-soft-cap logits:

    * without `token_ids`: values `[term, batch, pos, vocab]`;
    * with `token_ids` (an int or `[batch, pos]`, e.g. the next tokens): each term's
      contribution to that logit, `[term, batch, pos]`; minus that of `minus_ids`
      (an int or `[batch, pos]`: a logit difference), or, with `minus_ids="mean"`,
      minus the mean over the vocabulary (what matters to a softmax).

    `split_positional` gives token and learned-position parts of each term separately.
    """
    check_path_model(cfg)
    if split_positional and cfg.positional != "learned":
        raise ValueError(
            "split_positional=True needs learned positional embeddings; this model has "
            f"positional={cfg.positional!r} (its embedding has no positional part)"
        )
    capture = [name for name in _CAPTURE if name in capturable(cfg)]
    _, stream = run_with_stream(params, tokens, cfg, capture=capture)
    batch_pos = tuple(np.shape(tokens))
    ids = minus = None
    mode = "logits"
    if token_ids is not None:
        ids = jnp.asarray(_check_ids(token_ids, "token_ids", cfg, batch_pos))
        mode = "ids"
        if isinstance(minus_ids, str):
            if minus_ids != "mean":
                raise ValueError(f"minus_ids must be token ids or 'mean', got {minus_ids!r}")
            mode = "mean"
        elif minus_ids is not None:
            minus = jnp.asarray(_check_ids(minus_ids, "minus_ids", cfg, batch_pos))
    elif minus_ids is not None:
        raise ValueError("minus_ids needs token_ids (the logit it is subtracted from)")
    values = _decompose(
        params, stream, ids, minus, cfg=cfg, split_positional=split_positional, mode=mode
    )
    sources = ("embed", "pos_embed") if split_positional else ("embed",)
    labels, kinds = _labels(cfg, sources)
    return PathDecompositionResult(tuple(labels), tuple(kinds), values)


def k_composition_qk_circuit(params: Params, cfg: ModelConfig, *, fold: bool = True):
    """The K-composition term of each layer-1 head's token QK circuit, per layer-0 head:
    `W_E W_Q^{h2} (W_E W_OV^{h1} W_K^{h2})^T`, a `FactoredMatrix`
    `[head1 (layer 0), head2 (layer 1), vocab (query token), vocab (source token)]`.

    Entry [q, s]: the score of a query token q at a key position where layer-0 head h1
    attended to token s (Elhage et al. 2021). For a previous-token head h1, s is the
    token *before* the key, so an induction head h2 has a positive-eigenvalue (copying)
    matrix here: it attends to keys preceded by a copy of the query token, even where its
    direct token QK circuit (`circuits.full_qk_circuit`) is negative. `fold` folds norm
    weights first (`circuits.fold_norms`); norm scales, biases and the attention scale
    are left out, as in every circuit. Needs a model with at least 2 layers.
    """
    check_config(cfg)
    if cfg.n_layers < 2:
        raise ValueError(
            "k_composition_qk_circuit needs a model with at least 2 layers "
            "(layer-0 heads write what layer-1 heads' keys read)"
        )
    if fold:
        params, cfg = fold_norms(params, cfg)
    embedding = direct_path(params, cfg).A  # W_E * embed_scale [vocab, d_model]
    qk = qk_circuit(params, cfg)[1]  # A = W_Q [head2, d_model, d_head], B = W_K^T
    ov = ov_circuit(params, cfg)[0]  # A = W_V [head1, d_model, d_head], B = W_O
    query = embedding @ qk.A  # [head2, vocab, d_head]
    mixing = jnp.einsum("aed,bfd->abef", ov.B, qk.B)  # W_O^{h1} W_K^{h2} [h1, h2, e, f]
    key = jnp.einsum("ave,abef->abvf", embedding @ ov.A, mixing)  # [h1, h2, vocab, d_head]
    return FactoredMatrix(query[None], jnp.swapaxes(key, -1, -2))
