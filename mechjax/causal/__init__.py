"""What edited runs show: causal interventions, each sweep one compiled call (`mj.patching`).

    activation_patching(params, cfg, clean, corrupted, site, over, ...)  -> PatchingResult
    path_patching(params, cfg, clean, corrupted, receivers, ...)         -> PatchingResult
    attribution_patching(params, cfg, clean, corrupted, sites, ...)      -> {site: PatchingResult}
    compare_with_exact(params, cfg, clean, corrupted, site, over, ...)   -> ComparisonResult
    integrated_gradients(params, cfg, tokens, ...)                       -> IGResult

Metrics (`mechjax.causal.metrics`): `logit_diff`, `answer_prob`, `answer_logprob`, or
any `f(logits) -> scalar`; `answers=(correct, wrong)` builds the default logit
difference at the last position. Modules: `sweep` (the grid engine: axes, cells,
chunks, results), `metrics`, `activation_patching`, `path_patching` (Wang et al. 2022),
`attribution_patching` (first-order estimates), `ablation` (ablation sweeps), `tracing`
(causal tracing, Meng et al. 2022), `integrated_gradients`.
"""

from . import metrics
from .activation_patching import activation_patching, cell_patch
from .attribution_patching import ComparisonResult, attribution_patching, compare_with_exact
from .integrated_gradients import IGResult, integrated_gradients
from .metrics import answer_logprob, answer_prob, logit_diff
from .path_patching import path_patching
from .sweep import PatchingResult, normalize

__all__ = [
    "IGResult",
    "integrated_gradients",
    "ComparisonResult",
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
