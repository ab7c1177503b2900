"""What one run's activations show.

heads        head detectors (induction, prefix matching, previous token, duplicate
             token, copying) and the repeated-token inputs they read
lens         the logit lens and the tuned lens
attribution  direct logit attribution, integrated gradients, attention rollout
"""

from . import attribution, heads, lens, model_analysis, tuned_lens

__all__ = ["attribution", "heads", "lens", "model_analysis", "tuned_lens"]
