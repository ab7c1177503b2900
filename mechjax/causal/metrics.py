"""Metrics of a run's logits, as pytrees that `jax.jit` can take as arguments.

A metric maps `logits [batch, pos, vocab]` to a scalar (averaged over the batch). It is
a `jax.tree_util.Partial`: the function is static (part of the compiled program) and its
bound arguments, e.g. answer token ids, are traced data. So a new set of answers does
not recompile, and any plain callable `f(logits) -> scalar` works too (`as_metric` wraps
it; compiled once per function object).

    logit_diff(answer, wrong, pos=-1)   mean of logit[answer] - logit[wrong] at `pos`
    answer_prob(answer, pos=-1)         mean softmax probability of `answer` at `pos`
    answer_logprob(answer, pos=-1)      mean log-probability of `answer` at `pos`

`answer` / `wrong` are an int or an int array `[batch]` (one answer per example); so is
`pos` (each example's own position: its last real token in a right-padded batch).

These three read one position, and sweeps use that (`readout`): each patched run
unembeds only that position and its last block computes only that position. A plain
callable is opaque and gets the full logits, which costs more (with a 256k-token
vocabulary, far more).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from ..model.padding import last_token_index

Metric = Partial


def _pick(logits_at, ids) -> jax.Array:
    """logits_at [batch, vocab], ids int or [batch] -> [batch]."""
    ids = jnp.broadcast_to(jnp.asarray(ids, jnp.int32), logits_at.shape[:1])
    return jnp.take_along_axis(logits_at, ids[:, None], axis=-1)[:, 0]


def _at(logits, pos) -> jax.Array:
    """logits [batch, pos, vocab] at one position (an int) or at each example's own
    position (`[batch]`, e.g. its last real token in a right-padded batch): [batch, vocab]."""
    if jnp.ndim(pos) == 0:
        return logits[:, pos].astype(jnp.float32)
    index = jnp.asarray(pos, jnp.int32)[:, None, None]
    return jnp.take_along_axis(logits, index, axis=1)[:, 0].astype(jnp.float32)


def _logit_diff(answer, wrong, pos, logits):
    at = _at(logits, pos)
    return jnp.mean(_pick(at, answer) - _pick(at, wrong))


def _answer_prob(answer, pos, logits):
    at = jax.nn.softmax(_at(logits, pos), axis=-1)
    return jnp.mean(_pick(at, answer))


def _answer_logprob(answer, pos, logits):
    at = jax.nn.log_softmax(_at(logits, pos), axis=-1)
    return jnp.mean(_pick(at, answer))


def _position(pos):
    """An int stays an int (a sweep then reads only that position); one position per
    example becomes an int array [batch]."""
    if isinstance(pos, int | np.integer):
        return int(pos)
    values = np.asarray(pos)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"pos must be an int or one int per example [batch], got {pos!r}")
    return jnp.asarray(values, jnp.int32)


def logit_diff(answer, wrong, pos=-1) -> Metric:
    """Mean over the batch of `logit[answer] - logit[wrong]` at position `pos` (an int,
    or `[batch]`: each example's own position, e.g. `padding.last_token_index(mask)`)."""
    return Partial(
        _logit_diff, jnp.asarray(answer, jnp.int32), jnp.asarray(wrong, jnp.int32), _position(pos)
    )


def answer_prob(answer, pos=-1) -> Metric:
    """Mean over the batch of the softmax probability of `answer` at position `pos` (as
    in `logit_diff`)."""
    return Partial(_answer_prob, jnp.asarray(answer, jnp.int32), _position(pos))


def answer_logprob(answer, pos=-1) -> Metric:
    """Mean over the batch of the log-probability of `answer` at position `pos` (as in
    `logit_diff`)."""
    return Partial(_answer_logprob, jnp.asarray(answer, jnp.int32), _position(pos))


_READS_ONE_POSITION = (_logit_diff, _answer_prob, _answer_logprob)  # `pos`: last bound arg


def readout(metric: Metric, n_pos: int) -> tuple[tuple[int] | None, Metric]:
    """`(positions, metric_of_those_logits)`: for a metric of this module, which reads
    the logits at one position, that position (non-negative) and the same metric reading
    logits that hold only it (`[batch, 1, vocab]`), so that a sweep computes just those
    logits (`model.transformer.run_from`'s `readout`). Any other metric reads the full logits:
    `(None, metric)`."""
    if not (isinstance(metric, Partial) and metric.func in _READS_ONE_POSITION):
        return None, metric
    *bound, pos = metric.args
    if jnp.ndim(pos):  # each example reads its own position: the full logits
        return None, metric
    if not -n_pos <= int(pos) < n_pos:
        raise ValueError(
            f"the metric reads position {int(pos)}, outside the {n_pos} positions of the "
            f"inputs; give pos in [-{n_pos}, {n_pos})"
        )
    return (int(pos) % n_pos,), Partial(metric.func, *bound, 0)


def after_padding(metric: Metric, n_pos: int, n_new: int, padding_side: str) -> Metric | None:
    """The same metric on inputs with `n_new` padding columns added on `padding_side`
    (`model.padding.pad_columns`): it reads the same tokens, now in other columns. None
    for a metric this module cannot see into (a plain callable)."""
    if not (isinstance(metric, Partial) and metric.func in _READS_ONE_POSITION):
        return None
    *bound, pos = metric.args
    if padding_side == "right":  # columns keep their index; count from the real end
        pos = pos % n_pos if isinstance(pos, int) else jnp.asarray(pos) % n_pos
    elif isinstance(pos, int):  # left: columns move right; the last stays the last
        pos = pos + n_new if pos >= 0 else pos
    else:
        pos = jnp.asarray(pos) % n_pos + n_new
    return Partial(metric.func, *bound, pos)


def _check_ids(ids, name: str, cfg, batch: int) -> None:
    values = np.asarray(ids)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {values.dtype}")
    if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != batch):
        raise ValueError(
            f"{name} must be an int or one id per example [batch={batch}], got shape {values.shape}"
        )
    if values.size and (values.min() < 0 or values.max() >= cfg.d_vocab):
        raise ValueError(f"{name} ids {values.tolist()} are outside [0, {cfg.d_vocab})")


def resolve_metric(metric, answers, cfg, tokens_shape: tuple[int, ...], mask=None) -> Metric:
    """The metric to use: `metric` if given, else `logit_diff(*answers)` at the last
    position (with a padding `mask [batch, pos]`, each example's last real token).
    Checks in Python (before compiling) that it returns a scalar."""
    if metric is None:
        if answers is None:
            raise ValueError(
                "give either metric=f(logits) -> scalar or answers=(correct_id, wrong_id) "
                "for the default metric, the logit difference at the last position"
            )
        if not isinstance(answers, tuple | list) or len(answers) != 2:
            raise ValueError(
                f"answers must be a pair (correct_id, wrong_id) (ints or [batch] arrays), "
                f"got {answers!r}"
            )
        for ids, name in zip(answers, ("answers[0]", "answers[1]")):
            _check_ids(ids, name, cfg, tokens_shape[0])
        last = -1 if mask is None else last_token_index(mask)
        if mask is not None and (last == last[0]).all():
            last = int(last[0])  # left padding: one position for all (a cheaper readout)
        metric = logit_diff(*answers, pos=last)
    elif answers is not None:
        raise ValueError("give metric= or answers=, not both (answers only builds the default)")
    return check_metric(metric, cfg, tokens_shape)


_CHECKED: set = set()  # signatures of metrics already seen to return a scalar
_MAX_CHECKED = 256


def _signature(metric: Metric, logits: jax.ShapeDtypeStruct):
    """What the check's outcome depends on: the function and the static parts of the
    metric's tree, the shapes and dtypes of its bound arrays (and the values of its
    Python numbers, e.g. `pos`), and the logits' shape and dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(metric)
    parts = tuple(
        (type(x), x) if isinstance(x, int | float | bool) else (np.shape(x), np.result_type(x))
        for x in leaves
    )
    return treedef, parts, logits.shape, logits.dtype


def check_metric(metric, cfg, tokens_shape: tuple[int, ...]) -> Metric:
    """Wrap a plain callable as a `Partial` and check it maps logits to a scalar (once
    per signature: a sweep called again with new answer ids of the same shape skips
    the trace)."""
    if not callable(metric):
        raise ValueError(
            f"metric must be callable f(logits) -> scalar, got {type(metric).__name__}"
        )
    if not isinstance(metric, Partial):
        metric = Partial(metric)
    logits = jax.ShapeDtypeStruct((*tokens_shape, cfg.d_vocab), jnp.dtype(cfg.activation_dtype))
    signature = _signature(metric, logits)
    if signature in _CHECKED:
        return metric
    try:
        out = jax.eval_shape(metric, logits)
    except Exception as err:  # surface the metric's own error with context
        raise ValueError(
            f"metric failed on logits of shape {logits.shape}: {err}. It must map "
            "logits [batch, pos, vocab] to a scalar"
        ) from err
    if getattr(out, "shape", None) != ():
        raise ValueError(
            f"metric must return a scalar (e.g. average over the batch), got shape "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )
    if len(_CHECKED) >= _MAX_CHECKED:
        _CHECKED.clear()
    _CHECKED.add(signature)
    return metric
