"""Circuits read off the weights (no forward pass over data, except path terms).

weights        QK / OV / full / positional circuits, the direct path, norm folding,
               composition scores
eigen          eigenvalues of the full circuits and the eigenvalue copying statistics
factored       FactoredMatrix: a low-rank product kept as its two factors
paths          the path decomposition of a 1- or 2-layer attention-only model
skip_trigrams  the strongest skip-trigrams of the full QK and OV circuits
host_linalg    non-symmetric eigenvalues computed on the host CPU, whatever device holds
               the matrices (XLA's `eig` is a CPU kernel)
"""

from . import eigen, factored, paths, skip_trigrams, weights
from .eigen import (
    eigenvalue_copying,
    full_ov_eigenvalues,
    full_qk_eigenvalues,
    ov_eigenvalue_copying,
    qk_eigenvalue_copying,
)
from .factored import FactoredMatrix
from .paths import PathDecompositionResult, k_composition_qk_circuit, path_decomposition
from .skip_trigrams import SkipTrigram, format_skip_trigrams
from .weights import (
    composition_scores,
    direct_path,
    fold_norms,
    full_ov_circuit,
    full_qk_circuit,
    ov_circuit,
    positional_qk_circuit,
    qk_circuit,
    random_composition_baseline,
)

__all__ = [
    "FactoredMatrix",
    "PathDecompositionResult",
    "SkipTrigram",
    "composition_scores",
    "eigenvalue_copying",
    "direct_path",
    "eigen",
    "factored",
    "fold_norms",
    "format_skip_trigrams",
    "full_ov_circuit",
    "full_ov_eigenvalues",
    "full_qk_circuit",
    "full_qk_eigenvalues",
    "k_composition_qk_circuit",
    "ov_circuit",
    "ov_eigenvalue_copying",
    "path_decomposition",
    "paths",
    "positional_qk_circuit",
    "qk_circuit",
    "qk_eigenvalue_copying",
    "random_composition_baseline",
    "skip_trigrams",
    "weights",
]
