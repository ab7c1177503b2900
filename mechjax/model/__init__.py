"""The functional transformer: `params, tokens -> logits`, and the residual stream.

config     ModelConfig: every architecture choice, static and hashable
presets    named configs (attention-only toys, Gemma 1/2/3 sizes)
params     the parameter pytree: shapes, init, validation, the unembedding matrix
layers     norms, rotary embeddings, activations, soft-capping
attention  the attention kernel and its causal / sliding-window masks
forward    the forward pass (`forward`, `run_with_stream`) and the traced `run`
sites      the named activations a run can capture or edit
edits      interventions as data (`Edit`: ablate, patch, steer, scale)
stream     `Stream`: every component's write into the residual stream
losses     next-token losses
"""

from . import (
    attention,
    config,
    edits,
    layers,
    losses,
    params,
    presets,
    sites,
    stream,
    transformer,
    unembed,
)
from .config import ModelConfig
from .edits import Edit
from .params import check_params, count_params, init_params, param_shapes, unembedding
from .stream import Stream, logit_attribution
from .transformer import check_tokens, forward, run_with_stream

__all__ = [
    "attention",
    "checks",
    "config",
    "generate",
    "losses",
    "params",
    "stream",
    "transformer",
    "unembed",
    "Edit",
    "ModelConfig",
    "Stream",
    "check_params",
    "check_tokens",
    "count_params",
    "edits",
    "forward",
    "init_params",
    "layers",
    "logit_attribution",
    "param_shapes",
    "presets",
    "run_with_stream",
    "sites",
    "unembedding",
]
