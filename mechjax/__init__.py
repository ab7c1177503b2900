"""mechjax: a pure-JAX toolkit for mechanistic and developmental interpretability.

import mechjax as mj
cfg = mj.presets.attn_only(2)
params = mj.init_params(jax.random.key(0), cfg)
logits, stream = mj.run_with_stream(params, tokens, cfg)

Analysis modules are attributes (`mj.heads`, `mj.circuits`, `mj.circuit_eigen`,
`mj.patching`, `mj.lens`, `mj.attribution`, `mj.ablation`, `mj.tracing`,
`mj.checkpoints`); training and data are imported explicitly (`mechjax.train`, `mechjax.data`).
"""

from . import (
    ablation,
    attribution,
    checkpoints,
    circuit_eigen,
    circuits,
    edits,
    factored,
    heads,
    lens,
    patching,
    presets,
    sites,
    tracing,
)
from .config import ModelConfig
from .edits import Edit
from .model import check_tokens, forward, run_with_stream
from .params import check_params, count_params, init_params, param_shapes, unembedding
from .stream import Stream, logit_attribution

__all__ = [
    "Edit",
    "ablation",
    "attribution",
    "checkpoints",
    "circuit_eigen",
    "circuits",
    "factored",
    "heads",
    "lens",
    "patching",
    "tracing",
    "ModelConfig",
    "Stream",
    "check_params",
    "check_tokens",
    "count_params",
    "edits",
    "forward",
    "init_params",
    "logit_attribution",
    "param_shapes",
    "presets",
    "run_with_stream",
    "sites",
    "unembedding",
]
__version__ = "0.1.0"
