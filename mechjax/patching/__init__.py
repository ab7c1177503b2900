"""Causal interventions on clean/corrupted input pairs, each sweep one compiled call.

    activation_patching(params, cfg, clean, corrupted, site, over, ...)  -> PatchingResult
    path_patching(params, cfg, clean, corrupted, receivers, ...)         -> PatchingResult
    attribution_patching(params, cfg, clean, corrupted, sites, ...)      -> {site: PatchingResult}
    compare_with_exact(params, cfg, clean, corrupted, site, over, ...)   -> Comparison

Metrics (`mechjax.patching.metrics`): `logit_diff`, `answer_prob`, `answer_logprob`, or
any `f(logits) -> scalar`; `answers=(correct, wrong)` builds the default logit
difference at the last position. Modules: `activation` (sweeps), `path` (Wang et al.
2022), `attribution_patching` (first-order estimates), `grid` (axes, cells, results),
`metrics`.
"""

from . import metrics
from .activation import activation_patching, cell_patch
from .attribution_patching import Comparison, attribution_patching, compare_with_exact
from .grid import PatchingResult, normalize
from .metrics import answer_logprob, answer_prob, logit_diff
from .path import path_patching

__all__ = [
    "Comparison",
    "PatchingResult",
    "activation_patching",
    "answer_logprob",
    "answer_prob",
    "attribution_patching",
    "cell_patch",
    "compare_with_exact",
    "logit_diff",
    "metrics",
    "normalize",
    "path_patching",
]
