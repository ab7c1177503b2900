"""Skip-trigrams of a 1-layer attention-only model, read off its QK and OV circuits.

Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits") show that a
1-layer attention-only transformer is a sum of bigram and "skip-trigram" statistics: a
head lets a *source* token earlier in the context, attended to from the current
*destination* token, raise the logit of an *output* token, written `[src] … [dst] → [out]`.
The two halves live in the two circuits of each head (mechjax's row convention):

* full OV circuit `W_E W_OV W_U` `[src, out]`: how attending to src changes out's logit;
* full QK circuit `W_E W_QK W_E^T` `[dst (query), src (key)]`: how much dst attends to src.

The paper's table lists, per head, the largest OV entries and, for their sources, the
destinations with the largest QK entries; `skip_trigrams` builds exactly that table.

Both circuits are vocab x vocab of rank <= d_head. Never materialised whole: the largest
OV entries come from a blocked product (`top_entries`: rows of `A @ B` in chunks, a top-k
per chunk, then a top-k of the candidates), and a QK column is one matrix-vector
product, so a 256k vocabulary needs memory for one chunk of rows only.

By default the norm weights are folded into the weights first (`mechjax.circuits.fold_norms`:
LayerNorm centering and weights; the data-dependent scales are left out, as in the
circuits themselves), biases and positional embeddings are left out, and for RoPE the
QK circuit is the score at relative offset 0.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..model.checks import check_config
from ..model.config import ModelConfig
from ..model.params import Params, check_params
from .factored import FactoredMatrix
from .weights import fold_norms, full_ov_circuit, full_qk_circuit

_CHUNK_FLOATS = 2**22  # one block of rows of A @ B: 16 MiB of float32


@dataclasses.dataclass(frozen=True)
class SkipTrigram:
    """One large OV entry of a head and the destinations that attend to its source.

    `ov` = full OV[src, out]; `dst` the destination tokens, best first, with `qk` =
    full QK[dst, src] for each.
    """

    layer: int
    head: int
    src: int
    out: int
    ov: float
    dst: tuple[int, ...]
    qk: tuple[float, ...]

    def format(self, token_str: Callable[[int], str] = str) -> str:
        """`[src] … [dst1|dst2] → [out]` with tokens decoded by `token_str`."""
        dst = "|".join(token_str(t) for t in self.dst)
        return f"[{token_str(self.src)}] … [{dst}] → [{token_str(self.out)}]"


# -- blocked top-k of a factored matrix ------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("k", "chunk", "per_row"))
def _top_entries(A, B, row_ok, col_ok, *, k: int, chunk: int, per_row: int | None):
    """A `[n, m, r]`, B `[n, r, c]`, masks `[m]`, `[c]` (m a multiple of `chunk`) ->
    values, rows, cols `[n, k]` of the k largest allowed entries of each `A @ B`, taking
    at most `per_row` entries from any one row (None: no limit)."""
    n_rows, n_cols = A.shape[1], B.shape[2]
    n_chunks = n_rows // chunk
    row_ok = row_ok.reshape(n_chunks, chunk)

    def one_matrix(ab):
        a, b = ab  # [m, r], [r, c]

        def one_chunk(i):
            block = a.reshape(n_chunks, chunk, -1)[i] @ b  # [chunk, c]
            block = jnp.where(row_ok[i][:, None] & col_ok[None, :], block, -jnp.inf)
            rows = i * chunk + jnp.arange(chunk)
            if per_row is None:  # candidates: the chunk's k largest entries
                values, flat = jax.lax.top_k(block.reshape(-1), min(k, chunk * n_cols))
                return values, rows[flat // n_cols], flat % n_cols
            values, cols = jax.lax.top_k(block, per_row)  # each row's best, [chunk, per_row]
            rows = jnp.broadcast_to(rows[:, None], cols.shape)
            return values.reshape(-1), rows.reshape(-1), cols.reshape(-1)

        values, rows, cols = (x.reshape(-1) for x in jax.lax.map(one_chunk, jnp.arange(n_chunks)))
        values, pick = jax.lax.top_k(values, k)
        return values, rows[pick], cols[pick]

    return jax.lax.map(one_matrix, (A, B))


def top_entries(
    fm: FactoredMatrix,
    k: int,
    *,
    per_row: int | None = None,
    exclude_rows: Sequence[int] = (),
    exclude_cols: Sequence[int] = (),
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `k` largest entries of every matrix in `fm` `[..., m, n]` without forming it.

    Returns `(values, rows, cols)`, each `[..., k]`, largest first. Rows of `A @ B` are
    computed `chunk_rows` at a time (default: as many as fit in 2^22 floats), each block
    keeps its own candidates (its k largest entries, or with `per_row` each row's
    `per_row` largest), and the top k of all candidates is the answer. Excluded rows and
    columns never appear; if fewer than k entries are allowed, the missing ones have
    value -inf.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"top_entries: k must be a positive integer, got {k}")
    if per_row is not None and (int(per_row) != per_row or per_row < 1):
        raise ValueError(f"top_entries: per_row must be a positive integer or None, got {per_row}")
    lead, (m, n) = fm.shape[:-2], fm.shape[-2:]
    per_row = None if per_row is None else min(int(per_row), n)
    k = min(int(k), m * (per_row or n))
    chunk = chunk_rows or max(1, min(m, _CHUNK_FLOATS // n))
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"top_entries: chunk_rows must be a positive integer, got {chunk_rows}")
    chunk = min(int(chunk), m)
    row_ok = _allowed(m, exclude_rows, "exclude_rows")
    col_ok = _allowed(n, exclude_cols, "exclude_cols")
    pad = -m % chunk
    A = jnp.broadcast_to(fm.A, lead + fm.A.shape[-2:]).reshape((-1, m, fm.inner_dim))
    B = jnp.broadcast_to(fm.B, lead + fm.B.shape[-2:]).reshape((-1, fm.inner_dim, n))
    A = jnp.pad(A.astype(jnp.float32), ((0, 0), (0, pad), (0, 0)))
    row_ok = np.concatenate([row_ok, np.zeros(pad, bool)])
    values, rows, cols = _top_entries(
        A, B.astype(jnp.float32), row_ok, col_ok, k=k, chunk=chunk, per_row=per_row
    )
    shape = lead + (k,)
    return tuple(np.asarray(x).reshape(shape) for x in (values, rows, cols))


def _allowed(size: int, exclude: Sequence[int], name: str) -> np.ndarray:
    ids = np.asarray(list(exclude), dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"{name} has ids outside [0, {size}): {ids.tolist()}")
    ok = np.ones(size, bool)
    ok[ids] = False
    return ok


# -- the skip-trigram table --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("n_dst",))
def _top_destinations(qk_A, qk_B, src, dst_ok, *, n_dst: int):
    """Columns `src [n, s]` of each full QK `qk_A [n, vocab, r] @ qk_B [n, r, vocab]`:
    the n_dst largest entries (allowed rows only) -> values, rows `[n, s, n_dst]`."""
    columns = jnp.take_along_axis(qk_B, src[:, None, :], axis=2)  # [n, r, s]
    scores = jnp.einsum("nvr,nrs->nsv", qk_A, columns)  # [n, s, vocab (dst)]
    scores = jnp.where(dst_ok, scores, -jnp.inf)
    return jax.lax.top_k(scores, n_dst)


def skip_trigrams(
    params: Params,
    cfg: ModelConfig,
    *,
    n_ov: int = 10,
    n_dst: int = 3,
    per_source: int | None = 1,
    fold: bool = True,
    exclude: Sequence[int] = (),
    chunk_rows: int | None = None,
) -> list[list[SkipTrigram]]:
    """The skip-trigram table of a 1-layer attention-only model: `table[head]` is a list
    of `n_ov` `SkipTrigram`s, the head's largest full-OV entries `[src] → [out]` (largest
    first), each with the `n_dst` destinations whose full-QK entry for key `src` is largest.

    `per_source` caps the entries taken from one source token (default 1: the table shows
    `n_ov` different sources, each with its best output, as the paper's table does; None:
    the plain largest entries, which one dominant source row may fill). `fold` folds the
    norm weights into the circuits first; `exclude` lists token ids
    never used as src, dst or out (BOS, padding, unused ids); `chunk_rows` bounds the
    rows of the OV circuit formed at once (see `top_entries`).
    """
    check_config(cfg)
    if cfg.n_layers != 1 or not cfg.attn_only:
        raise ValueError(
            "skip-trigrams are the exact reading of a 1-layer attention-only model; this "
            f"model has {cfg.n_layers} layer(s){'' if cfg.attn_only else ' and MLPs'}. "
            "Use mechjax.circuits.full_ov_circuit / full_qk_circuit to inspect its heads"
        )
    for name, value in (("n_ov", n_ov), ("n_dst", n_dst)):
        if int(value) != value or value < 1:
            raise ValueError(f"skip_trigrams: {name} must be a positive integer, got {value}")
    check_params(params, cfg)
    allowed = int(_allowed(cfg.d_vocab, exclude, "exclude").sum())
    if allowed == 0:
        raise ValueError("skip_trigrams: every token id is excluded; exclude fewer ids")
    n_dst = min(int(n_dst), allowed)
    if fold:
        params, cfg = fold_norms(params, cfg)
    ov = full_ov_circuit(params, cfg)[0]  # [head, src, out]
    values, src, out = top_entries(
        ov,
        n_ov,
        per_row=per_source,
        exclude_rows=exclude,
        exclude_cols=exclude,
        chunk_rows=chunk_rows,
    )
    qk = full_qk_circuit(params, cfg)[0]  # [head, dst, src]
    dst_ok = jnp.asarray(_allowed(cfg.d_vocab, exclude, "exclude"))
    qk_values, dst = _top_destinations(
        qk.A.astype(jnp.float32), qk.B.astype(jnp.float32), jnp.asarray(src), dst_ok, n_dst=n_dst
    )
    qk_values, dst = np.asarray(qk_values), np.asarray(dst)
    table = []
    for h in range(cfg.n_heads):
        rows = [
            SkipTrigram(
                layer=0,
                head=h,
                src=int(src[h, i]),
                out=int(out[h, i]),
                ov=float(values[h, i]),
                dst=tuple(int(t) for t in dst[h, i]),
                qk=tuple(float(v) for v in qk_values[h, i]),
            )
            for i in range(values.shape[1])
            if np.isfinite(values[h, i])
        ]
        table.append(rows)
    return table


def format_skip_trigrams(
    table: list[list[SkipTrigram]], token_str: Callable[[int], str] = str
) -> str:
    """Plain text: one line per skip-trigram, `L0H3  [src] … [dst] → [out]  OV 1.23  QK 4.56`."""
    lines = []
    for rows in table:
        for t in rows:
            lines.append(
                f"L{t.layer}H{t.head}  {t.format(token_str)}  OV {t.ov:.3g}  QK {t.qk[0]:.3g}"
            )
    return "\n".join(lines)
