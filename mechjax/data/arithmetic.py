"""Single-digit arithmetic: the task of the layer-removal study (seed 000).

The source study ("Looking Inside Gemma", layer removal in Gemma 2 2B) prompts a model
with `a+b=`, `a-b=`, `a*b=`, `a/b=` (a, b single digits) and reads the answer as the
next token predicted at the last prompt position. Here the problem set is every such
prompt whose answer is itself one digit 0-9:

    +   a + b <= 9                     55 problems
    -   a - b >= 0                     55 problems
    *   a * b <= 9                     42 problems
    /   b != 0 and b divides a         32 problems (exact division only)
                                      184 in all

Text is byte-tokenized with the project's `ByteTokenizer` (one token per character, BOS
first). A prompt is `[BOS, a, op, b, "="]`, 5 tokens for every problem, so the answer
is always predicted at the last position and no padding is needed.

Training sequences (`batch`) pack random problems from the training split with their
answers, one per line, after BOS: `"<bos>3+4=7\\n8/2=4\\n1*6=6\\n..."`, cut at `n_ctx`.
The model is trained on every next byte (the loss also covers the unpredictable
operands); only the answers are predictable beyond chance, and `accuracy` measures
those, on prompts that stand alone after BOS as in the source.

Splits. `holdout_every=k` holds out every k-th problem of the canonical order (by
operation, then a, then b) as the "test" split; "train" is the rest and "all" both.
`holdout_every=0` holds nothing out: the model trains on all 184 problems and its
accuracy is then in-distribution, i.e. memorised skill. With so few problems that is
the natural setting for a layer-removal study, and it is what the source measures too:
a pretrained model has certainly seen single-digit arithmetic in pretraining.

    ds = Arithmetic(n_ctx=64, holdout_every=5)
    tokens, answers = ds.prompts("test")        # [n, 5] int32, answer token ids [n]
    predicted = mechjax.model.generate.greedy_next_tokens(params, tokens, cfg)
    ds.accuracy(predicted, "test")              # {"+": .., "-": .., "*": .., "/": .., "overall": ..}
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ..model.checks import check_fields
from .sampling import check_batch_size, check_n_batches, eval_rng, step_rng
from .tokenizer import ByteTokenizer

OPERATIONS = ("+", "-", "*", "/")
SPLITS = ("train", "test", "all")
_TOKENIZER = ByteTokenizer()


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem `a op b = answer` (digits)."""

    a: int
    op: str
    b: int
    answer: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def line(self) -> str:
        """The problem with its answer and a newline, as packed in training sequences."""
        return f"{self.prompt}{self.answer}\n"


def solve(a: int, op: str, b: int) -> int | None:
    """The answer of `a op b` if it is a single digit 0-9 (exact division only), else None."""
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif op == "/":
        if b == 0 or a % b:
            return None
        value = a // b
    else:
        raise ValueError(f"unknown operation {op!r}; choose one of {OPERATIONS}")
    return value if 0 <= value <= 9 else None


def all_problems() -> tuple[Problem, ...]:
    """Every problem with a single-digit answer, ordered by operation, then a, then b."""
    return tuple(
        Problem(a, op, b, answer)
        for op in OPERATIONS
        for a in range(10)
        for b in range(10)
        if (answer := solve(a, op, b)) is not None
    )


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    """Packed single-digit arithmetic problems (see the module docstring).

    n_ctx: training sequence length (BOS + packed lines), at least 6 so that one whole
        problem with its answer fits.
    holdout_every: hold out every k-th problem as the "test" split; 0 holds out none.
    """

    name: ClassVar[str] = "arithmetic"
    n_ctx: int = 64
    holdout_every: int = 5

    def __post_init__(self):
        check_fields(self, type(self).__name__)
        for field in ("n_ctx", "holdout_every"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"Arithmetic.{field} must be an int, got {value!r}")
        if self.n_ctx < 6:
            raise ValueError(f"n_ctx must be >= 6 (BOS and one problem 'a+b=c'), got {self.n_ctx}")
        if self.holdout_every < 0 or self.holdout_every == 1:
            raise ValueError(
                f"holdout_every must be 0 (hold out nothing) or >= 2 (hold out every k-th "
                f"problem), got {self.holdout_every}"
            )

    # -- the dataset protocol ---------------------------------------------------------------
    @property
    def tokenizer(self) -> ByteTokenizer:
        return _TOKENIZER

    @property
    def vocab_size(self) -> int:
        return _TOKENIZER.vocab_size

    @property
    def bos_id(self) -> int:
        return _TOKENIZER.bos_id

    def batch(self, seed, step, batch_size) -> np.ndarray:
        """tokens [batch, n_ctx] int32: BOS + training-split lines; a function of (seed, step)."""
        return self._packed(step_rng(seed, step), self.problems("train"), batch_size)

    def eval_batches(self, n, batch_size) -> np.ndarray:
        """tokens [n, batch, n_ctx] int32: fixed packed sequences of the test split (of all
        problems when none is held out)."""
        n, batch_size = check_n_batches(n), check_batch_size(batch_size)
        split = "test" if self.holdout_every else "all"
        pool = self.problems(split)
        return np.stack([self._packed(eval_rng(i), pool, batch_size) for i in range(n)])

    def token_str(self, token_id: int) -> str:
        return _TOKENIZER.token_str(token_id)

    def describe(self) -> str:
        counts = {s: len(self.problems(s)) for s in ("train", "test")}
        held = (
            f"every {self.holdout_every}th problem held out ({counts['test']} test, "
            f"{counts['train']} train)"
            if self.holdout_every
            else f"none held out (all {counts['train']} problems trained on)"
        )
        return (
            f"single-digit arithmetic a+b=, a-b=, a*b=, a/b= with one-digit answers "
            f"({len(all_problems())} problems; {held}); bytes, lines packed after BOS, "
            f"context {self.n_ctx}"
        )

    # -- problems and prompts -------------------------------------------------------------------
    def problems(self, split: str = "all") -> tuple[Problem, ...]:
        """The problems of `split` ("train", "test" or "all"), in canonical order."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: choose one of {SPLITS}")
        everything = all_problems()
        if split == "all":
            return everything
        k = self.holdout_every
        held = [k > 0 and (i + 1) % k == 0 for i in range(len(everything))]
        return tuple(p for p, h in zip(everything, held) if h == (split == "test"))

    def prompts(self, split: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """(tokens [n, 5] int32 = BOS a op b "=", answers [n] int32: the answer digit's
        token id), in the order of `problems(split)`. The answer is the next token after
        the last position."""
        problems = self.problems(split)
        if not problems:
            raise ValueError(
                f"split {split!r} is empty (holdout_every={self.holdout_every} holds out "
                "nothing); use split='all' or 'train'"
            )
        tokens = np.stack([_TOKENIZER.encode(p.prompt, bos=True) for p in problems])
        answers = np.array([_TOKENIZER.encode(str(p.answer), bos=False)[0] for p in problems])
        return tokens.astype(np.int32), answers.astype(np.int32)

    def accuracy(self, predicted, split: str = "all") -> dict[str, float]:
        """Greedy accuracy per operation and "overall" on the prompts of `split`, from the
        model's predictions `predicted [prompt]` (token ids, in the order of
        `prompts(split)`; e.g. `mechjax.model.generate.greedy_next_tokens`)."""
        _, answers = self.prompts(split)
        predicted = np.asarray(predicted)
        if predicted.shape != answers.shape:
            raise ValueError(
                f"predicted has shape {predicted.shape}; split {split!r} has "
                f"{len(answers)} prompts: predict one token per prompt of prompts(split)"
            )
        return accuracy_by_operation(predicted == answers, self.problems(split))

    # -- internals -------------------------------------------------------------------------------
    def _packed(self, rng: np.random.Generator, pool, batch_size) -> np.ndarray:
        batch_size = check_batch_size(batch_size)
        lines = np.stack([_TOKENIZER.encode(p.line, bos=False) for p in pool])  # [problem, 6]
        per_row = -(-(self.n_ctx - 1) // lines.shape[1])  # ceil: enough lines to fill a row
        picked = rng.integers(0, len(pool), size=(batch_size, per_row))
        body = lines[picked].reshape(batch_size, -1)[:, : self.n_ctx - 1]
        bos = np.full((batch_size, 1), self.bos_id, np.int32)
        return np.concatenate([bos, body.astype(np.int32)], axis=1)


def accuracy_by_operation(correct, problems) -> dict[str, float]:
    """`{op: accuracy, ..., "overall": accuracy}` from per-problem correctness [n] (bool),
    in the order of `problems`."""
    correct = np.asarray(correct, bool)
    if correct.shape != (len(problems),):
        raise ValueError(
            f"correct has shape {correct.shape}; expected one entry per problem ({len(problems)})"
        )
    ops = np.array([p.op for p in problems])
    out = {op: float(correct[ops == op].mean()) for op in OPERATIONS if (ops == op).any()}
    out["overall"] = float(correct.mean())
    return out
