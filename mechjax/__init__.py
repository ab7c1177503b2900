"""mechjax: a pure-JAX toolkit for mechanistic and developmental interpretability.

import mechjax as mj
cfg = mj.presets.attn_only(2)
params = mj.init_params(jax.random.key(0), cfg)
logits, stream = mj.run_with_stream(params, tokens, cfg)

One package per kind of evidence, data flowing down this list (docs/ARCHITECTURE.md):
`model` (the functional transformer), `io` (models and runs in and out), `data`,
`circuits` (read off the weights), `activations` (read off one run), `causal` (read off
edited runs), `dynamics` (how it changes over training), `train`, `views`, `cli`.

The names users call most are attributes here: `mj.forward`, `mj.run_with_stream`,
`mj.init_params`, `mj.presets`, `mj.edits`, `mj.sites`, `mj.heads`, `mj.lens`,
`mj.attribution`, `mj.circuits`, `mj.circuit_eigen`, `mj.factored`, `mj.patching` (the
`causal` package), `mj.ablation`, `mj.tracing`, `mj.checkpoints` (the `io` package).
Training, dynamics, data and views are imported explicitly (`mechjax.train`, ...).

`mj.enable_compilation_cache()` keeps compiled programs on disk, so the next process
skips XLA compilation (`compilation_cache`; `MECHJAX_COMPILATION_CACHE=1` does it at
import; the `mechjax` command does it by default).

More than one device: `mj.make_mesh("data=2,model=2")`, `mj.shard_params(params, mesh)`,
`with mj.use_mesh(mesh): ...` (sweeps spread their cells over the devices), and
`mechjax.train.train(..., mesh=mesh)`; `mj.distributed.initialize()` first in each
process of a multi-process run (`distributed`, `model.sharding`).
"""

from . import activations, causal, circuits, distributed, io, model
from .activations import attribution, heads, lens
from .causal import ablation, tracing
from .circuits import eigen as circuit_eigen
from .circuits import factored
from .compilation_cache import enable_compilation_cache, enable_from_env
from .distributed import make_mesh
from .model import (
    Edit,
    ModelConfig,
    Stream,
    check_params,
    check_tokens,
    config,
    count_params,
    edits,
    forward,
    init_params,
    layers,
    logit_attribution,
    losses,
    param_shapes,
    params,
    presets,
    run_with_stream,
    sites,
    stream,
    unembedding,
)
from .model.sharding import shard_params, use_mesh
from .version import __version__ as __version__

patching = causal  # the name users know for activation / path / attribution patching
checkpoints = io  # the name users know for loading and saving models

try:  # MECHJAX_COMPILATION_CACHE: on-disk cache of compiled programs (compilation_cache)
    enable_from_env()
except ValueError as _err:  # a bad folder must not break the import
    import warnings

    warnings.warn(f"compilation cache not enabled: {_err}", stacklevel=2)


__all__ = [
    "Edit",
    "ModelConfig",
    "Stream",
    "ablation",
    "activations",
    "attribution",
    "causal",
    "check_params",
    "check_tokens",
    "checkpoints",
    "circuit_eigen",
    "circuits",
    "config",
    "count_params",
    "distributed",
    "edits",
    "enable_compilation_cache",
    "factored",
    "forward",
    "heads",
    "init_params",
    "io",
    "layers",
    "lens",
    "losses",
    "logit_attribution",
    "make_mesh",
    "model",
    "param_shapes",
    "params",
    "patching",
    "presets",
    "run_with_stream",
    "shard_params",
    "sites",
    "stream",
    "tracing",
    "unembedding",
    "use_mesh",
]
