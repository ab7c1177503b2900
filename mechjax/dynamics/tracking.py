"""What is measured during training, and when.

The metrics themselves are defined once, where their analysis lives: head detectors in
`mechjax.activations.heads`, composition scores in `mechjax.circuits`, per-token losses in
`mechjax.model.losses`, PCA in `mechjax.dynamics.pca`. This module fixes the evaluation inputs at the
start of a run (so every snapshot is measured on the same data), schedules the
evaluations, and turns each into one JSON-able record (the run directory's
`metrics.jsonl` format, see `docs/RUN_FORMAT.md`).

In-context-learning score (Olsson et al. 2022): mean loss at token index 500 minus at
index 50 in 512-token contexts. Shorter contexts use the same fractions of the context
(e.g. indices 6 and 62 of 64); the record says which ("olsson" or "proportional").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..activations import heads
from ..io.runs import HEAD_SCORES
from ..model.config import ModelConfig
from ..model.losses import token_losses

OLSSON_CONTEXT, OLSSON_EARLY, OLSSON_LATE = 512, 50, 500


def log_spaced_steps(total: int, n: int) -> list[int]:
    """About `n` distinct integer steps in [1, total], log-spaced (dense early), plus total."""
    if total < 1 or n < 1:
        return [total] if total >= 1 else []
    points = np.unique(np.round(np.geomspace(1, total, n)).astype(int))
    return sorted(set(points.tolist()) | {total})


def icl_indices(n_ctx: int) -> tuple[int, int, str]:
    """(early, late, note): token indices whose loss difference is the ICL score."""
    if n_ctx > OLSSON_LATE:
        return OLSSON_EARLY, OLSSON_LATE, "olsson"
    early = max(1, round(OLSSON_EARLY * n_ctx / OLSSON_CONTEXT))
    late = min(n_ctx - 1, round(OLSSON_LATE * n_ctx / OLSSON_CONTEXT))
    return early, late, "proportional"


@dataclasses.dataclass
class RepeatedInput:
    """Repeated random tokens `[batch, 1 + n_repeats * seg_len]` (BOS first)."""

    tokens: np.ndarray
    seg_len: int
    n_repeats: int
    bos_id: int


@dataclasses.dataclass
class EvalInputs:
    """Fixed inputs of every evaluation of a run."""

    eval_tokens: np.ndarray  # [examples, pos] held-out sequences
    pca_token_index: np.ndarray  # [examples] one fixed token index (>= 1) per example
    # two copies (TransformerLens's induction score: with more copies an induction head
    # spreads its attention over every earlier copy) ...
    induction_input: RepeatedInput
    # ... and Olsson et al.'s prefix-matching input: 25 tokens repeated 4 times
    prefix_input: RepeatedInput


def make_eval_inputs(
    dataset, model_cfg: ModelConfig, *, n_eval: int, seed: int = 12345
) -> EvalInputs:
    """Draw the fixed evaluation inputs from the dataset's held-out data.

    The same held-out examples give the mean loss, the loss by token index, the ICL
    score and (at one fixed random token index each) the per-token-loss vector for PCA,
    so one forward pass serves every loss-based metric. Repeated random segments (25
    tokens, shortened to fit the context, drawn from the token ids the held-out data
    contains) feed the head detectors.
    """
    n_ctx = dataset.n_ctx
    eval_tokens = np.asarray(dataset.eval_batches(1, n_eval)[0])
    rng = np.random.default_rng(seed)
    pca_token_index = rng.integers(1, n_ctx, size=n_eval)

    # random tokens are drawn from the ids that occur in the held-out data: a byte-level
    # model has never trained the embeddings of bytes its text lacks
    unseen = set(range(dataset.vocab_size)) - set(np.unique(eval_tokens).tolist())
    exclude = tuple(sorted(unseen | set(special_ids(dataset))))

    def repeated(n_repeats: int) -> RepeatedInput:
        seg_len = min(heads.OLSSON_SEG_LEN, (n_ctx - 1) // n_repeats)
        tokens = heads.repeated_tokens(
            seed,
            16,
            seg_len,
            dataset.vocab_size,
            n_repeats=n_repeats,
            bos_id=dataset.bos_id,
            exclude=exclude,
        )
        return RepeatedInput(np.asarray(tokens), seg_len, n_repeats, dataset.bos_id)

    return EvalInputs(eval_tokens, pca_token_index, repeated(2), repeated(heads.OLSSON_N_REPEATS))


def special_ids(dataset) -> tuple[int, ...]:
    """Token ids that are not data (BOS, and PAD where the tokenizer has one)."""
    ids = {int(dataset.bos_id)}
    pad = getattr(getattr(dataset, "tokenizer", None), "pad_id", None)
    if pad is not None:
        ids.add(int(pad))
    return tuple(sorted(ids))


class Tracker:
    """Evaluates a model on the run's fixed inputs; one call per scheduled step.

    Every activation-based metric of one evaluation comes from one compiled call (the
    held-out losses and both head-detector inputs), so an evaluation costs about three
    forward passes over the evaluation sets and one host transfer."""

    # head scores recorded from each repeated input (the prefix-matching input only
    # serves its own score)
    INDUCTION_INPUT_SCORES = ("induction", "previous_token", "copying")

    def __init__(self, model_cfg: ModelConfig, inputs: EvalInputs):
        self.cfg = model_cfg
        self.inputs = inputs
        self.early, self.late, self.icl_note = icl_indices(inputs.eval_tokens.shape[1])
        rows = np.arange(len(inputs.pca_token_index))
        cols = inputs.pca_token_index - 1  # loss column j is the loss on token index j + 1
        # the inputs are arguments, not constants folded into the compiled program
        self._tokens = tuple(
            jnp.asarray(x.tokens if isinstance(x, RepeatedInput) else x, jnp.int32)
            for x in (inputs.eval_tokens, inputs.induction_input, inputs.prefix_input)
        )

        def detect(params, tokens, repeated: RepeatedInput, names):
            return heads.head_scores(
                params,
                model_cfg,
                tokens,
                seg_len=repeated.seg_len,
                n_repeats=repeated.n_repeats,
                has_bos=repeated.bos_id is not None,
                names=names,
            )

        @jax.jit
        def measure(params, eval_tokens, induction_tokens, prefix_tokens):
            eval_losses = token_losses(params, eval_tokens, model_cfg)
            out = {
                "mean": eval_losses.mean(),
                "by_pos": eval_losses.mean(axis=0),
                "pca": eval_losses[rows, cols],
            }
            if model_cfg.n_layers:
                induction = inputs.induction_input
                out.update(detect(params, induction_tokens, induction, self.INDUCTION_INPUT_SCORES))
                out.update(detect(params, prefix_tokens, inputs.prefix_input, ("prefix_matching",)))
            return out

        self._measure = measure

    def evaluate(self, params) -> tuple[dict, np.ndarray]:
        """(record, per_token_losses [N]) for one model's params."""
        cfg = self.cfg
        measured = jax.device_get(self._measure(params, *self._tokens))
        by_pos = measured["by_pos"]
        record = {
            "eval_loss": float(measured["mean"]),
            "icl_score": float(by_pos[self.late - 1] - by_pos[self.early - 1]),
            "icl_indices": [self.early, self.late],
            "icl_note": self.icl_note,
            "loss_by_pos": [round(float(x), 5) for x in by_pos],
            "best_induction": None,
            "k_composition": None,
        }
        if cfg.n_layers:
            for name in HEAD_SCORES:
                record[name] = np.round(np.asarray(measured[name], float), 5).tolist()
            induction = np.asarray(measured["induction"])
            layer, head = np.unravel_index(int(np.argmax(induction)), induction.shape)
            record["best_induction"] = {
                "layer": int(layer),
                "head": int(head),
                "score": float(induction[layer, head]),
            }
        if cfg.n_layers >= 2:
            from ..circuits import weights as circuits

            kcomp = np.asarray(circuits.composition_scores(params, cfg, "K"))
            record["k_composition"] = np.round(kcomp[0, :, 1, :], 5).tolist()
        return record, np.asarray(measured["pca"], np.float32)
