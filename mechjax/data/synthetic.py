"""Synthetic sequence tasks on which small transformers grow induction heads quickly.

Every task is a small frozen dataclass with `vocab_size`, `bos_id`, `n_ctx` and

    batch(seed, step, batch_size)            -> tokens [batch, n_ctx] int32
    batch_with_info(seed, step, batch_size)  -> (tokens, info: dict of arrays)
    eval_batches(n, batch_size)              -> tokens [n, batch, n_ctx] int32

Each row is `[BOS, x_1, ..., x_{n_ctx-1}]`. The last id, `vocab_size - 1`, is BOS; the
other `vocab_size - 1` ids are the token values. A batch is a function of (seed, step)
only (`mechjax.data.sampling`). `info` holds the latent variables of each row (segment
lengths, trigger targets, transition matrices) so that tests and analyses can check them.

Tasks (the phase-change settings listed in the project's METHODS.md):

* `RepeatedSegments` ("tiled" repeats): BOS, a short random prefix, then one random
  segment repeated to the end of the context. Measured here: a 2-layer attention-only
  model goes through the induction phase change within ~2,000 steps.
* `TriggerBigrams` (Bietti et al. 2023, "Birth of a Transformer: A Memory Viewpoint"):
  a fixed bigram background chain plus a few trigger tokens, each followed in a sequence
  by the same sequence-specific token.
* `RandomMarkov` (Edelman et al. 2024, "The Evolution of Statistical Induction Heads:
  In-Context Learning Markov Chains"): a fresh Markov chain per sequence, transition rows
  ~ Dirichlet(alpha).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ..model.checks import check_fields
from .sampling import check_batch_size, check_n_batches, eval_rng, step_rng


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """The stationary distribution pi (pi @ P = pi, sum(pi) = 1) of row-stochastic matrices.

    transition: [..., state, next_state]; returns [..., state]. Solves the linear system
    (P^T - I) pi = 0 with one equation replaced by the normalisation; assumes the chain
    is irreducible (true almost surely for Dirichlet rows with every alpha > 0).
    """
    transition = np.asarray(transition, np.float64)
    k = transition.shape[-1]
    system = np.swapaxes(transition, -1, -2) - np.eye(k)
    system[..., -1, :] = 1.0
    rhs = np.zeros(transition.shape[:-1])
    rhs[..., -1] = 1.0
    pi = np.linalg.solve(system, rhs[..., None])[..., 0]
    pi = np.clip(pi, 0.0, None)  # round-off can leave -1e-17
    return pi / pi.sum(-1, keepdims=True)


def _draw(cdf_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling. cdf_rows [batch, k] (cumulative probabilities), u [batch] in
    [0, 1) -> index [batch]: the first j with u < cdf[j]."""
    k = cdf_rows.shape[-1]
    # the last cumulative value can round to just below 1; clamp to the last index
    return np.minimum((u[:, None] >= cdf_rows).sum(-1), k - 1)


@dataclasses.dataclass(frozen=True)
class _Task:
    """Fields and sampling plumbing shared by the synthetic tasks."""

    name: ClassVar[str]  # the name `make_dataset` knows the task by
    vocab_size: int = 64
    n_ctx: int = 64

    def __post_init__(self):
        check_fields(self, type(self).__name__)
        self._check_ints("vocab_size", "n_ctx")
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (two values and BOS), got {self.vocab_size}")
        if self.n_ctx < 2:
            raise ValueError(f"n_ctx must be >= 2 (BOS and one token), got {self.n_ctx}")

    def _check_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{type(self).__name__}.{name} must be an int, got {value!r}")

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 1

    @property
    def n_values(self) -> int:
        """How many non-special token values there are (ids 0..n_values-1)."""
        return self.vocab_size - 1

    def batch(self, seed, step, batch_size) -> np.ndarray:
        """tokens [batch, n_ctx] int32 for training step `step` of the run seeded `seed`."""
        return self.batch_with_info(seed, step, batch_size)[0]

    def batch_with_info(self, seed, step, batch_size) -> tuple[np.ndarray, dict]:
        """(tokens [batch, n_ctx] int32, info): the batch and each row's latent variables."""
        rng = step_rng(seed, step)
        body, info = self._sample(rng, check_batch_size(batch_size))
        bos = np.full((body.shape[0], 1), self.bos_id, np.int32)
        return np.concatenate([bos, body.astype(np.int32)], axis=1), info

    def eval_batches(self, n, batch_size) -> np.ndarray:
        """tokens [n, batch, n_ctx] int32: fixed held-out batches, never a training batch."""
        n, batch_size = check_n_batches(n), check_batch_size(batch_size)
        bos = np.full((batch_size, 1), self.bos_id, np.int32)
        rows = [self._sample(eval_rng(i), batch_size)[0].astype(np.int32) for i in range(n)]
        return np.stack([np.concatenate([bos, body], axis=1) for body in rows])

    def token_str(self, token_id: int) -> str:
        """Label for figures: the id itself, or "<bos>"."""
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside [0, {self.vocab_size})")
        return "<bos>" if token_id == self.bos_id else str(token_id)

    def _sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, dict]:
        """-> (body [batch, n_ctx - 1] of ids < n_values, info). Implemented per task."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RepeatedSegments(_Task):
    """BOS, a random prefix of 0..max_prefix tokens, then one random segment of
    min_len..max_len tokens repeated (tiled) to the end of the context.

    Tokens are uniform over the `vocab_size - 1` values. After the prefix, the token at
    position i equals the token at i - segment_len, so from the second copy on every
    token is predictable by induction. info: `prefix_len` [batch], `segment_len` [batch].
    """

    name: ClassVar[str] = "repeated"
    min_len: int = 8
    max_len: int = 30
    max_prefix: int = 8

    def __post_init__(self):
        super().__post_init__()
        self._check_ints("min_len", "max_len", "max_prefix")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"need 1 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}"
            )
        if self.max_prefix < 0:
            raise ValueError(f"max_prefix must be >= 0, got {self.max_prefix}")
        if 1 + self.max_prefix + self.max_len >= self.n_ctx:
            raise ValueError(
                f"n_ctx={self.n_ctx} leaves no room for a repeat after BOS, a prefix of up to "
                f"{self.max_prefix} and a segment of up to {self.max_len} tokens; use "
                f"n_ctx > {1 + self.max_prefix + self.max_len} or shorter segments"
            )

    def _sample(self, rng, batch_size):
        prefix_len = rng.integers(0, self.max_prefix + 1, size=batch_size)
        segment_len = rng.integers(self.min_len, self.max_len + 1, size=batch_size)
        # Fixed-size pools: each row uses the first prefix_len / segment_len entries.
        prefix_pool = rng.integers(0, self.n_values, size=(batch_size, max(self.max_prefix, 1)))
        segment_pool = rng.integers(0, self.n_values, size=(batch_size, self.max_len))

        j = np.arange(self.n_ctx - 1)[None, :]  # index into the body (position j + 1)
        in_prefix = j < prefix_len[:, None]
        prefix_idx = np.minimum(j, prefix_pool.shape[1] - 1)
        segment_idx = (j - prefix_len[:, None]) % segment_len[:, None]
        body = np.where(
            in_prefix,
            np.take_along_axis(prefix_pool, np.broadcast_to(prefix_idx, in_prefix.shape), 1),
            np.take_along_axis(segment_pool, segment_idx, 1),
        )
        return body, {"prefix_len": prefix_len, "segment_len": segment_len}

    def describe(self) -> str:
        return (
            f"repeated segments: BOS, a random prefix of 0-{self.max_prefix} tokens, then one "
            f"random segment of {self.min_len}-{self.max_len} tokens repeated to the end; "
            f"{self.n_values} token values + BOS (vocab {self.vocab_size}), context {self.n_ctx}"
        )


@dataclasses.dataclass(frozen=True)
class TriggerBigrams(_Task):
    """A fixed bigram background with trigger tokens (Bietti et al. 2023).

    From the task `seed`, once: a background chain over the `vocab_size - 1` values and
    `n_triggers` trigger tokens. The paper estimates its background from character
    bigrams of Shakespeare; as a stand-in with a similarly skewed unigram distribution,
    each row is drawn ~ Dirichlet(alpha * n_values * base) with `base[v] ∝ (v + 1)^-zipf`
    (Zipf's law; `zipf=0` gives plain Dirichlet(alpha) rows). The triggers are the most
    frequent values under the chain's stationary distribution, as in the paper's
    fixed-trigger setting (the most frequent characters), so each recurs within a context.

    Per sequence: each trigger gets a target drawn uniformly from the non-trigger values
    (never a trigger, so triggers cannot chain into loops), and every occurrence of the
    trigger is followed by its target; all other transitions follow the background. The
    first token is drawn from the background's stationary distribution. Predicting a
    target needs induction; everything else only the global bigram statistics.

    Attributes (derived from `seed`): `background` [value, next_value] (row-stochastic,
    read-only), `triggers` [n_triggers]. info: `targets` [batch, n_triggers].
    """

    name: ClassVar[str] = "trigger-bigrams"
    n_triggers: int = 3
    alpha: float = 1.0
    zipf: float = 1.0
    seed: int = 0
    background: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    triggers: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        self._check_ints("n_triggers", "seed")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 1 <= self.n_triggers <= self.n_values - 1:
            raise ValueError(
                f"n_triggers must be in [1, {self.n_values - 1}] (targets need a non-trigger "
                f"value), got {self.n_triggers}"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha (Dirichlet concentration) must be > 0, got {self.alpha}")
        if not self.zipf >= 0:
            raise ValueError(f"zipf (unigram exponent) must be >= 0, got {self.zipf}")
        base = np.arange(1, self.n_values + 1, dtype=np.float64) ** -float(self.zipf)
        concentration = float(self.alpha) * self.n_values * base / base.sum()
        rng = np.random.default_rng(self.seed)  # the task's own draw, not a batch stream
        background = rng.dirichlet(concentration, size=self.n_values)
        pi = stationary_distribution(background)
        triggers = np.sort(np.argsort(-pi, kind="stable")[: self.n_triggers])
        for name, value in (("background", background), ("triggers", triggers)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    def _sample(self, rng, batch_size):
        n_values, triggers = self.n_values, self.triggers
        others = np.setdiff1d(np.arange(n_values), triggers)
        targets = others[rng.integers(0, len(others), size=(batch_size, len(triggers)))]
        u = rng.random((batch_size, self.n_ctx - 1))

        # trigger_slot[v]: which trigger value v is, or -1
        trigger_slot = np.full(n_values, -1)
        trigger_slot[triggers] = np.arange(len(triggers))
        cdf = np.cumsum(self.background, axis=1)
        first_cdf = np.cumsum(stationary_distribution(self.background))

        rows = np.arange(batch_size)
        body = np.empty((batch_size, self.n_ctx - 1), np.int64)
        body[:, 0] = _draw(np.broadcast_to(first_cdf, (batch_size, n_values)), u[:, 0])
        for t in range(1, self.n_ctx - 1):
            prev = body[:, t - 1]
            slot = trigger_slot[prev]
            sampled = _draw(cdf[prev], u[:, t])
            body[:, t] = np.where(slot >= 0, targets[rows, np.maximum(slot, 0)], sampled)
        return body, {"targets": targets}

    def describe(self) -> str:
        return (
            f"trigger bigrams (Bietti et al. 2023): a fixed bigram background over "
            f"{self.n_values} values (rows ~ Dirichlet, alpha {self.alpha}, Zipf exponent "
            f"{self.zipf}, task seed {self.seed}); "
            f"triggers {self.triggers.tolist()} each followed by a per-sequence target; "
            f"BOS = {self.bos_id} (vocab {self.vocab_size}), context {self.n_ctx}"
        )


@dataclasses.dataclass(frozen=True)
class RandomMarkov(_Task):
    """A fresh random Markov chain per sequence (Edelman et al. 2024).

    Per sequence: a transition matrix over `n_states` states (token ids 0..n_states-1)
    with rows ~ Dirichlet(alpha), the first state drawn from its stationary distribution,
    then `n_ctx - 1` states of the chain after BOS. The best predictor estimates the
    chain's bigram statistics in context (a "statistical induction head"); the paper
    reports the phases uniform -> unigram -> bigram. A small `n_states` keeps the
    n_states^2 transition probabilities estimable within one context.
    info: `transition` [batch, state, next_state].
    """

    name: ClassVar[str] = "markov"
    n_states: int = 3
    alpha: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        self._check_ints("n_states")
        if not 2 <= self.n_states <= self.n_values:
            raise ValueError(
                f"n_states must be in [2, vocab_size - 1 = {self.n_values}], got {self.n_states}"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha (Dirichlet concentration) must be > 0, got {self.alpha}")

    def _sample(self, rng, batch_size):
        k = self.n_states
        transition = rng.dirichlet(np.full(k, float(self.alpha)), size=(batch_size, k))
        u = rng.random((batch_size, self.n_ctx - 1))
        cdf = np.cumsum(transition, axis=-1)  # [batch, state, next_state]

        rows = np.arange(batch_size)
        body = np.empty((batch_size, self.n_ctx - 1), np.int64)
        body[:, 0] = _draw(np.cumsum(stationary_distribution(transition), -1), u[:, 0])
        for t in range(1, self.n_ctx - 1):
            body[:, t] = _draw(cdf[rows, body[:, t - 1]], u[:, t])
        return body, {"transition": transition}

    def describe(self) -> str:
        return (
            f"random Markov chains (Edelman et al. 2024): a fresh {self.n_states}-state chain "
            f"per sequence, rows ~ Dirichlet({self.alpha}); BOS = {self.bos_id} "
            f"(vocab {self.vocab_size}), context {self.n_ctx}"
        )
