"""Head detectors: which attention heads are previous-token, duplicate-token, induction,
prefix-matching or copying heads.

Every score is an array `[layer, head]` computed from attention patterns
`pattern [layer, batch, head, query_pos, key_pos]` (as `run_with_stream` captures them)
on repeated random tokens, and all of them come out of one jitted forward pass in
`detect_heads`. The scores are jittable, so a training loop can call them cheaply.

Sources (facts and definitions only):

* Olsson et al. 2022, "In-context Learning and Induction Heads" (transformer-circuits.pub):
  prefix-matching and copying scores on 25 random tokens repeated 4 times after a BOS.
* TransformerLens conventions: the induction score is the mean attention on the diagonal
  at offset `-(seg_len - 1)` of the pattern on `[BOS, r, r]`; its `head_detector` scores a
  head by `sum(pattern * detection) / sum(pattern)` (`pattern_match_score` below gives
  exactly that number, to compare with it).

Token layout of a repeated sequence (`seg_len = T`, `n_repeats = n`, `o = 1` with a BOS,
else 0): position `o + c*T + i` holds segment token `i` of copy `c` (c = 0..n-1).

Conventions shared by the scores below: means are pooled over the batch and the query
positions that qualify (every sequence contributes the same number of queries, except
for the duplicate-token score, whose qualifying queries depend on the tokens).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.checks import check_config, check_tokens
from ..model.config import ModelConfig
from ..model.params import Params, check_params
from ..model.sites import capturable
from ..model.stream import Stream
from ..model.transformer import run
from .copying import copying_scores

# Olsson et al. 2022's detector input: a BOS, then 25 random tokens repeated 4 times
OLSSON_SEG_LEN = 25
OLSSON_N_REPEATS = 4
SCORE_NAMES = ("induction", "prefix_matching", "previous_token", "duplicate_token", "copying")

# Default labelling thresholds (`head_table`). Induction 0.4 is the usual TransformerLens /
# METHODS.md cut (chance is about 1/seg_len). The copying score lives on [-1, 1] with an
# unrelated head at 2/n - 1 (n distinct tokens in the sequence: -0.92 for 25 tokens and
# a BOS); -0.8 gives the attended token a tenth of the raise among the sample's tokens,
# 2.6 times its chance share. Small models' low-rank OV circuits raise many similar
# tokens, so a trained toy's induction heads sit near -0.7 (checkpoints/attn2), not +1.
DEFAULT_THRESHOLDS = {
    "induction": 0.4,
    "prefix_matching": 0.4,
    "previous_token": 0.4,
    "duplicate_token": 0.4,
    "copying": -0.8,
}


# -- inputs ------------------------------------------------------------------------------


def repeated_tokens(
    seed: int,
    batch: int,
    seg_len: int,
    vocab_size: int,
    *,
    n_repeats: int = 2,
    bos_id: int | None = None,
    exclude=(),
) -> np.ndarray:
    """Repeated random tokens `[batch, (1 if bos_id is not None else 0) + n_repeats*seg_len]`.

    Each row is `[BOS?] + s * n_repeats` with `s` a segment of `seg_len` ids drawn
    uniformly (with replacement) from `range(vocab_size)` minus `exclude` and minus
    `bos_id` (specials are never drawn). Deterministic in `seed` (numpy PCG64).
    """
    for name, value, least in (
        ("batch", batch, 1),
        ("seg_len", seg_len, 1),
        ("vocab_size", vocab_size, 1),
        ("n_repeats", n_repeats, 1),
    ):
        if int(value) != value or value < least:
            raise ValueError(f"repeated_tokens: {name} must be an integer >= {least}, got {value}")
    if bos_id is not None and not 0 <= bos_id < vocab_size:
        raise ValueError(f"repeated_tokens: bos_id={bos_id} is outside [0, {vocab_size})")
    banned = set(int(t) for t in exclude) | ({int(bos_id)} if bos_id is not None else set())
    allowed = np.setdiff1d(np.arange(vocab_size), np.array(sorted(banned), dtype=np.int64))
    if allowed.size == 0:
        raise ValueError(
            f"repeated_tokens: every id in [0, {vocab_size}) is excluded; exclude fewer ids"
        )
    rng = np.random.default_rng(seed)
    segment = allowed[rng.integers(0, allowed.size, size=(batch, seg_len))]
    parts = [np.tile(segment, (1, n_repeats))]
    if bos_id is not None:
        parts.insert(0, np.full((batch, 1), bos_id, dtype=segment.dtype))
    return np.concatenate(parts, axis=1).astype(np.int32)


def _check_pattern(pattern, fn: str) -> None:
    if getattr(pattern, "ndim", None) != 5 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(
            f"{fn}: pattern must have shape [layer, batch, head, query_pos, key_pos] with "
            f"query_pos == key_pos, got {getattr(pattern, 'shape', type(pattern).__name__)}; "
            "pass stream['pattern'] from run_with_stream"
        )


def _layout(n_pos: int, seg_len: int, n_repeats: int | None, has_bos: bool, fn: str):
    """Check that `n_pos` positions hold `[BOS?] + n_repeats copies of seg_len`; return n."""
    offset = int(has_bos)
    if seg_len < 1:
        raise ValueError(f"{fn}: seg_len must be >= 1, got {seg_len}")
    body = n_pos - offset
    if n_repeats is None:
        if body % seg_len:
            raise ValueError(
                f"{fn}: {n_pos} positions are not {'a BOS plus ' if has_bos else ''}whole "
                f"copies of a {seg_len}-token segment; check seg_len and has_bos"
            )
        n_repeats = body // seg_len
    elif body != n_repeats * seg_len:
        raise ValueError(
            f"{fn}: pattern has {n_pos} positions but {'1 (BOS) + ' if has_bos else ''}"
            f"{n_repeats} x {seg_len} = {offset + n_repeats * seg_len} were expected; "
            "check seg_len, n_repeats and has_bos"
        )
    if n_repeats < 2:
        raise ValueError(f"{fn}: need at least 2 copies of the segment, got {n_repeats}")
    return n_repeats


# -- masks: which (query, key) entries each score reads -------------------------------------


def _induction_mask(seg_len: int, n_repeats: int, has_bos: bool) -> np.ndarray:
    """`[q, k]` ones where q is in copy >= 2 and k = q - (seg_len - 1): the token after
    the occurrence of q's token in the previous copy."""
    o, n_pos = int(has_bos), int(has_bos) + n_repeats * seg_len
    mask = np.zeros((n_pos, n_pos), np.float32)
    q = np.arange(o + seg_len, n_pos)
    mask[q, q - (seg_len - 1)] = 1.0
    return mask


def _prefix_mask(seg_len: int, n_repeats: int, has_bos: bool) -> np.ndarray:
    """`[q, k]` ones where q is in copy c >= 2 and k follows q's token in ANY earlier copy:
    k = q - m*seg_len + 1 for m = 1..c-1 (i.e. for every earlier copy)."""
    o, n_pos = int(has_bos), int(has_bos) + n_repeats * seg_len
    mask = np.zeros((n_pos, n_pos), np.float32)
    for c in range(1, n_repeats):
        q = np.arange(o + c * seg_len, o + (c + 1) * seg_len)
        for m in range(1, c + 1):
            mask[q, q - m * seg_len + 1] = 1.0
    return mask


def _masked_mean(pattern, mask, n_queries: int) -> jax.Array:
    """Sum of `pattern [layer, batch, head, q, k]` over the mask's entries, divided by the
    number of (batch, query) pairs that have entries: `[layer, head]`."""
    # multiply-and-sum: XLA CPU runs this ~40x faster than the equivalent einsum
    total = (pattern.astype(jnp.float32) * jnp.asarray(mask)).sum(axis=(1, 3, 4))
    return total / (pattern.shape[1] * n_queries)


# -- scores from patterns -------------------------------------------------------------------


def induction_scores(pattern, seg_len: int, *, has_bos: bool = True) -> jax.Array:
    """Induction score `[layer, head]` from `pattern [layer, batch, head, q, k]` on repeated
    tokens (`[BOS?] + n copies of a seg_len segment`, n >= 2 inferred from the shape).

    Mean, over every query in copies 2..n (and the batch), of the attention to the position
    right after the same token's occurrence in the *previous* copy: the diagonal
    `k = q - (seg_len - 1)`. This is TransformerLens's induction stripe (offset
    `-(seg_len - 1)`) restricted to the queries that have an earlier copy: the full
    stripe of TL's tutorials also counts the last two positions of the first copy (the
    last one attending to BOS), which shifts its mean by O(1/seg_len). An exact
    induction head scores 1; chance is about 1/position.
    """
    _check_pattern(pattern, "induction_scores")
    n = _layout(pattern.shape[-1], seg_len, None, has_bos, "induction_scores")
    mask = _induction_mask(seg_len, n, has_bos)
    return _masked_mean(pattern, mask, (n - 1) * seg_len)


def prefix_matching_scores(
    pattern, seg_len: int, n_repeats: int, *, has_bos: bool = True
) -> jax.Array:
    """Prefix-matching score `[layer, head]` (Olsson et al. 2022).

    For each query in copy c (c = 2..n), the attention summed over the tokens that followed
    ALL earlier occurrences of its token (one per earlier copy), averaged over those
    queries and the batch. In [0, 1]; Olsson et al. use seg_len=25, n_repeats=4, a BOS.
    """
    _check_pattern(pattern, "prefix_matching_scores")
    _layout(pattern.shape[-1], seg_len, n_repeats, has_bos, "prefix_matching_scores")
    mask = _prefix_mask(seg_len, n_repeats, has_bos)
    return _masked_mean(pattern, mask, (n_repeats - 1) * seg_len)


def _real_pairs(mask, n_pos: int):
    """`[batch, q, k]` True where query and key are both real tokens (all True without a
    padding `mask [batch, pos]`)."""
    if mask is None:
        return jnp.ones((1, n_pos, n_pos), bool)
    mask = jnp.asarray(mask, bool)
    return mask[:, :, None] & mask[:, None, :]


def previous_token_scores(pattern, mask=None) -> jax.Array:
    """Previous-token score `[layer, head]`: mean attention from position i to i-1 over
    i >= 1 and the batch. With a padding `mask [batch, pos]` (False at padding), over
    the pairs where both are real tokens."""
    _check_pattern(pattern, "previous_token_scores")
    n_pos = pattern.shape[-1]
    if n_pos < 2:
        raise ValueError("previous_token_scores: needs at least 2 positions")
    if mask is None:
        return _masked_mean(pattern, np.eye(n_pos, k=-1, dtype=np.float32), n_pos - 1)
    pairs = _real_pairs(mask, n_pos) & jnp.eye(n_pos, k=-1, dtype=bool)
    total = (pattern.astype(jnp.float32) * pairs[None, :, None]).sum(axis=(1, 3, 4))
    return total / pairs.sum()


def duplicate_token_scores(pattern, tokens, mask=None) -> jax.Array:
    """Duplicate-token score `[layer, head]`.

    For each (batch, query) whose token occurred earlier in its sequence, the attention
    summed over those earlier occurrences; the mean over all such queries (pooled over
    the batch). NaN when no query has an earlier copy. With a padding `mask [batch,
    pos]`, queries and earlier occurrences are real tokens only.
    """
    _check_pattern(pattern, "duplicate_token_scores")
    tokens = jnp.asarray(tokens)
    if tokens.shape != pattern.shape[1:2] + pattern.shape[-1:]:
        raise ValueError(
            f"duplicate_token_scores: tokens {tuple(tokens.shape)} do not match the pattern's "
            f"[batch, pos] = {tuple(pattern.shape[1:2] + pattern.shape[-1:])}"
        )
    n_pos = tokens.shape[-1]
    earlier = jnp.tril(jnp.ones((n_pos, n_pos), bool), k=-1)
    same = (tokens[:, :, None] == tokens[:, None, :]) & earlier  # [batch, q, k]
    same = same & _real_pairs(mask, n_pos)
    total = (pattern.astype(jnp.float32) * same[None, :, None]).sum(axis=(1, 3, 4))
    count = same.any(-1).sum()
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def pattern_match_score(
    pattern, detection, *, exclude_bos: bool = False, exclude_current_token: bool = False
) -> jax.Array:
    """TransformerLens's `detect_head` "mul" score, `[layer, head]`: per sequence
    `sum(p * detection) / sum(p)` with `p` the pattern, its column 0 zeroed if
    `exclude_bos` and its diagonal zeroed if `exclude_current_token`; averaged over the
    batch. `detection` is `[q, k]` or `[batch, q, k]` (see `detection_patterns`).

    Note the denominator counts every query row, including rows with no detection entry,
    so this is smaller than the means of the `*_scores` functions (e.g. for a previous-token
    pattern it is (pos-1)/pos times `previous_token_scores`).
    """
    _check_pattern(pattern, "pattern_match_score")
    p = pattern.astype(jnp.float32)
    n_pos = p.shape[-1]
    keep = jnp.ones((n_pos, n_pos), jnp.float32)
    if exclude_bos:
        keep = keep.at[:, 0].set(0.0)
    if exclude_current_token:
        keep = keep * (1.0 - jnp.eye(n_pos, dtype=jnp.float32))
    p = p * keep
    detection = jnp.asarray(detection, jnp.float32)
    if detection.ndim == 2:
        detection = jnp.broadcast_to(detection, (p.shape[1], n_pos, n_pos))
    per_seq = (p * detection[None, :, None]).sum((-2, -1)) / p.sum((-2, -1))
    return per_seq.mean(axis=1)


def detection_patterns(tokens) -> dict[str, jax.Array]:
    """TransformerLens's detection patterns `[batch, q, k]` for `tokens [batch, pos]`:
    "previous_token_head" (ones at k = q-1), "duplicate_token_head" (ones at earlier
    positions with the same token), "induction_head" (the duplicate pattern shifted one
    key to the right: the tokens that followed earlier copies)."""
    tokens = jnp.asarray(tokens)
    batch, n_pos = tokens.shape
    earlier = jnp.tril(jnp.ones((n_pos, n_pos), bool), k=-1)
    duplicate = ((tokens[:, :, None] == tokens[:, None, :]) & earlier).astype(jnp.float32)
    induction = jnp.pad(duplicate[:, :, :-1], ((0, 0), (0, 0), (1, 0)))
    previous = jnp.broadcast_to(jnp.eye(n_pos, k=-1, dtype=jnp.float32), (batch, n_pos, n_pos))
    return {
        "previous_token_head": previous,
        "duplicate_token_head": duplicate,
        "induction_head": induction,
    }


# -- everything from one forward pass -----------------------------------------------------------


def _capture_names(cfg: ModelConfig, names: tuple[str, ...]) -> tuple[str, ...]:
    copying = {"z", "ln1_post_scale", "ln_final_scale"}  # what head_logit_effects reads
    wanted = {"pattern"} | (copying if "copying" in names else set())
    return tuple(sorted(wanted & set(capturable(cfg))))


@functools.partial(jax.jit, static_argnames=("cfg", "seg_len", "n_repeats", "has_bos", "names"))
def head_scores(
    params: Params,
    cfg: ModelConfig,
    tokens,
    *,
    seg_len: int,
    n_repeats: int,
    has_bos: bool,
    names: tuple[str, ...] = SCORE_NAMES,
) -> dict[str, jax.Array]:
    """The jitted core of `detect_heads`, without validation (for use inside other jitted
    code, e.g. a training loop): one forward pass on repeated `tokens [batch, pos]`
    capturing only the patterns and what the copying score needs, then the scores
    `names` (a subset of `SCORE_NAMES`), each `[layer, head]`. Needs n_layers >= 1."""
    _, captured = run(params, tokens, cfg, capture=_capture_names(cfg, names))
    stream = Stream(captured)
    pattern = stream["pattern"]
    score = {
        "induction": lambda: induction_scores(pattern, seg_len, has_bos=has_bos),
        "prefix_matching": lambda: prefix_matching_scores(
            pattern, seg_len, n_repeats, has_bos=has_bos
        ),
        "previous_token": lambda: previous_token_scores(pattern),
        "duplicate_token": lambda: duplicate_token_scores(pattern, tokens),
        "copying": lambda: copying_scores(params, cfg, stream, tokens),
    }
    return {name: score[name]() for name in names}


def detect_heads(
    params: Params,
    cfg: ModelConfig,
    tokens=None,
    *,
    seed: int = 0,
    batch: int = 8,
    seg_len: int = OLSSON_SEG_LEN,
    n_repeats: int = OLSSON_N_REPEATS,
    bos_id: int | None = None,
) -> dict[str, np.ndarray]:
    """All head scores from one jitted forward pass: `{name: [layer, head]}` for
    `SCORE_NAMES` ("induction", "prefix_matching", "previous_token", "duplicate_token",
    "copying").

    `tokens` must be repeated sequences `[batch, (bos_id is not None) + n_repeats*seg_len]`
    laid out as `repeated_tokens` makes them; when None they are generated with
    `repeated_tokens(seed, batch, seg_len, cfg.d_vocab, n_repeats=n_repeats, bos_id=bos_id)`
    (Olsson et al.'s setting is the default seg_len=25, n_repeats=4, plus a BOS).
    """
    check_config(cfg)
    has_bos = bos_id is not None
    n_pos = int(has_bos) + n_repeats * seg_len
    if tokens is None:
        if cfg.positional == "learned" and n_pos > cfg.n_ctx:
            raise ValueError(
                f"detect_heads: {n_repeats} x {seg_len} repeated tokens"
                f"{' + BOS' if has_bos else ''} = {n_pos} positions exceed n_ctx={cfg.n_ctx}; "
                "lower seg_len or n_repeats"
            )
        tokens = repeated_tokens(
            seed, batch, seg_len, cfg.d_vocab, n_repeats=n_repeats, bos_id=bos_id
        )
    tokens = np.asarray(tokens) if not isinstance(tokens, jax.Array) else tokens
    check_tokens(tokens, cfg)
    if tokens.shape[1] != n_pos:
        raise ValueError(
            f"detect_heads: tokens have {tokens.shape[1]} positions but seg_len={seg_len}, "
            f"n_repeats={n_repeats}{', with a BOS' if has_bos else ''} means {n_pos}; pass the "
            "seg_len/n_repeats/bos_id the tokens were built with"
        )
    _layout(n_pos, seg_len, n_repeats, has_bos, "detect_heads")
    check_params(params, cfg)
    if cfg.n_layers == 0:
        return {name: np.zeros((0, cfg.n_heads), np.float32) for name in SCORE_NAMES}
    scores = head_scores(
        params,
        cfg,
        jnp.asarray(tokens, jnp.int32),
        seg_len=seg_len,
        n_repeats=n_repeats,
        has_bos=has_bos,
    )
    return {name: np.asarray(value) for name, value in scores.items()}


# -- labelling ------------------------------------------------------------------------------------


def head_table(scores: dict, thresholds: dict | None = None) -> list[dict]:
    """One row per head: `{"layer", "head", <every score>, "labels": [...]}`, where a head
    gets label `name` when `scores[name][layer, head] > thresholds[name]`
    (defaults `DEFAULT_THRESHOLDS`; pass a dict to override some of them). Rows are in
    (layer, head) order; NaN scores never pass a threshold."""
    if not scores:
        raise ValueError("head_table: no scores given; pass detect_heads(...)'s result")
    arrays = {name: np.asarray(value, np.float64) for name, value in scores.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(
            f"head_table: every score must be [layer, head] with one shape, got "
            f"{ {n: a.shape for n, a in arrays.items()} }"
        )
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    unknown = sorted(set(thresholds or {}) - set(arrays))
    if unknown:
        raise ValueError(
            f"head_table: thresholds for unknown scores {unknown}; have {sorted(arrays)}"
        )
    n_layers, n_heads = next(iter(shapes))
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            row = {"layer": layer, "head": head}
            row.update({name: float(a[layer, head]) for name, a in arrays.items()})
            row["labels"] = [name for name in arrays if name in limits and row[name] > limits[name]]
            rows.append(row)
    return rows


def format_head_table(rows: list[dict], *, only_labelled: bool = False) -> str:
    """Plain-text table of `head_table` rows (one line per head, scores to 3 decimals)."""
    if only_labelled:
        rows = [r for r in rows if r["labels"]]
    if not rows:
        return "(no heads)"
    names = [k for k in rows[0] if k not in ("layer", "head", "labels")]
    header = ["head"] + names + ["labels"]
    lines = [
        [f"L{r['layer']}H{r['head']}"] + [f"{r[n]:.3f}" for n in names] + [", ".join(r["labels"])]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(
        f"{{:<{w}}}" if i in (0, len(header) - 1) else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    out = [fmt.format(*header).rstrip(), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line).rstrip() for line in lines]
    return "\n".join(out)
