"""A terminal progress bar for training: loss, in-context-learning score and the best
induction score, fed by the training loop's `on_step` callback."""

from __future__ import annotations

import numpy as np


class ProgressBar:
    """`train(..., on_step=ProgressBar())`; call `close()` when training returns (or use
    it as a context manager). The bar starts at the step the run starts from."""

    def __init__(self, refresh_every: int = 10):
        self.refresh_every = refresh_every
        self._bar = None

    def __call__(self, report) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=report.total,
                initial=report.start,
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5,
            )
        self._bar.update(1)
        if report.step % self.refresh_every == 0 or report.evaluated:
            self._bar.set_postfix_str(postfix(report.losses, report.record))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def postfix(losses, record: dict) -> str:
    """`loss=… icl=… ind=…` from a step's losses and the latest evaluation record."""
    parts = [f"loss={float(np.mean(losses)):.3f}"]
    if record:
        parts.append(f"icl={record['icl_score']:+.3f}")
        if record.get("best_induction"):
            parts.append(f"ind={record['best_induction']['score']:.2f}")
    return " ".join(parts)
