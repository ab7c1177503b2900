"""What one run's activations show.

heads           head detectors (induction, prefix matching, previous token, duplicate
                token, copying) and the repeated-token inputs they read
copying         Olsson et al.'s copying score: a head's direct effect on what it attends to
lens            the logit lens
tuned_lens      the tuned lens: affine translators trained per layer, saved beside a model
attribution     direct logit attribution tables, attention rollout
model_analysis  what `mechjax analyze` computes, as one `ModelAnalysisResult`
"""

from . import attribution, copying, heads, lens, model_analysis, tuned_lens

__all__ = ["attribution", "copying", "heads", "lens", "model_analysis", "tuned_lens"]
