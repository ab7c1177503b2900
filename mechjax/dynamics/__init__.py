"""How a model changes over training.

tracking  the evaluations a training run records (head scores, ICL score, per-token
          losses) on fixed inputs, each one compiled call
phase     detecting the induction-head phase change in a run's curves
pca       per-token-loss PCA of a run's snapshots
"""

from . import pca, phase, tracking

__all__ = ["pca", "phase", "tracking"]
