"""A text corpus mixed with a share of repeated text segments.

Byte-level natural text needs billions of tokens before the induction-head phase change
(Olsson et al. 2022; METHODS.md measured no change in 5.7M bytes of the standard
library). Mixing in sequences where a short stretch of the same text is repeated to the
end of the context makes copying from earlier in the context pay off at once, so the
phase change comes within a few thousand steps on a CPU. It is a mixture, and runs say
so: `describe()` names the share. Evaluation batches are the corpus's held-out text
mixed the same way (with a fixed generator), so the evaluation measures the training
distribution; `base.eval_batches` gives the natural text alone.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..model.checks import check_fields
from .sampling import check_batch_size

_SEGMENT_WORDS = {
    "text": "stretch of that text",
    "random": "segment of random tokens (bytes seen in the text)",
}


@dataclasses.dataclass(frozen=True)
class RepeatMixture:
    """`base` (a corpus) where a `fraction` of each batch's rows are replaced by
    BOS + a random stretch of that row's text, `min_len..max_len` tokens long, repeated
    to the end of the context."""

    base: object
    fraction: float = 0.25
    min_len: int = 8
    max_len: int = 30
    segments: str = "text"  # "text": a stretch of the row's own text; "random": random tokens

    def __post_init__(self):
        check_fields(self, type(self).__name__)
        if self.segments not in ("text", "random"):
            raise ValueError(f"segments must be 'text' or 'random', got {self.segments!r}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"fraction must lie in [0, 1], got {self.fraction}")
        if not 1 <= self.min_len <= self.max_len or self.max_len > self.base.n_ctx - 1:
            raise ValueError(
                f"segment lengths must satisfy 1 <= min_len <= max_len <= n_ctx - 1 = "
                f"{self.base.n_ctx - 1}; got {self.min_len}..{self.max_len}"
            )

    @property
    def name(self) -> str:
        return f"{getattr(self.base, 'name', 'text')}+repeats"

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def bos_id(self) -> int:
        return self.base.bos_id

    @property
    def n_ctx(self) -> int:
        return self.base.n_ctx

    @property
    def tokenizer(self):
        return getattr(self.base, "tokenizer", None)

    def batch(self, seed, step, batch_size) -> np.ndarray:
        """tokens [batch, n_ctx] int32; a function of (seed, step) only."""
        batch_size = check_batch_size(batch_size)
        # a generator independent of the base's own draws for this (seed, step)
        return self._mix(
            self.base.batch(seed, step, batch_size), np.random.default_rng([seed, step, 1])
        )

    def eval_batches(self, n, batch_size) -> np.ndarray:
        """tokens [n, batch, n_ctx]: held-out text, mixed with a fixed generator."""
        held_out = np.asarray(self.base.eval_batches(n, batch_size))
        flat = self._mix(held_out.reshape(-1, self.n_ctx), np.random.default_rng([2**31 - 1, 0, 2]))
        return flat.reshape(held_out.shape)

    def _mix(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replace a `fraction` of rows by a stretch of their own text, tiled."""
        tokens = np.array(tokens)
        repeated = rng.random(len(tokens)) < self.fraction
        lengths = rng.integers(self.min_len, self.max_len + 1, size=len(tokens))
        n_body = self.n_ctx - 1
        for row in np.flatnonzero(repeated):
            if self.segments == "random":
                segment = rng.choice(self.support, size=lengths[row])
            else:
                segment = tokens[row, 1 : 1 + lengths[row]]
            tokens[row, 1:] = np.resize(segment, n_body)  # np.resize tiles the segment
        return tokens

    @functools.cached_property
    def support(self) -> np.ndarray:
        """Token ids that occur in the base's held-out text (BOS excluded): random
        segments use only tokens the model also sees in text."""
        ids = np.unique(np.asarray(self.base.eval_batches(1, 64)))
        return ids[ids != self.bos_id]

    def token_str(self, token_id: int) -> str:
        return self.base.token_str(token_id)

    def describe(self) -> str:
        return (
            f"mixture: {self.base.describe()}; in training, {self.fraction:.0%} of sequences are "
            f"a {self.min_len}-{self.max_len}-token {_SEGMENT_WORDS[self.segments]} repeated to the end "
            "(evaluation: held-out text mixed the same way)"
        )
