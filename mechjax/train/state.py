"""Training options, the `TrainState` pytree and the jitted update step.

The step is `optax` AdamW behind global-norm clipping, with a linear warm-up followed by
a cosine / linear / constant schedule. Several models of the same shape (seeds or
configurations) train together as one compiled step: every state carries a leading
`model` axis and the step is `jit(vmap(update))`.

On a mesh (`mechjax.distributed.make_mesh`) the step is the same program with sharded
inputs: the batch split over the mesh's `data` axis, the models over `seed`, each
parameter and its Adam moments replicated or, with `fsdp`, split as
`mechjax.model.sharding` says. XLA inserts the gradient all-reduce.

`precision="bfloat16"` trains in mixed precision: the float32 parameters stay the
master copy the optimiser updates; the forward and backward run on a bfloat16 copy
(softmax and the loss in float32, as always), and the gradients come back float32.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from ..model import sharding
from ..model.checks import check_fields
from ..model.config import ModelConfig
from ..model.losses import mean_loss
from ..model.params import init_params

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the recipe of the 2-layer toy in METHODS.md."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 50
    schedule: str = "cosine"
    final_lr_fraction: float = 0.1  # the schedule decays to lr * this
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float | None = 1.0  # None: no clipping
    seeds: tuple[int, ...] = (0,)  # one model per seed, trained together (vmap)
    data_seed: int | None = None  # None: each model's data stream uses its own seed
    n_evals: int = 60  # evaluations, log-spaced over the run (plus step 0 and the end)
    n_log_checkpoints: int = 20  # log-spaced checkpoints (dense early)
    checkpoint_every: int = 1000  # plus periodic ones
    eval_batch_size: int = 256  # fixed held-out examples: eval loss, ICL score and PCA vectors
    precision: str = "float32"  # "bfloat16": mixed precision, float32 master weights

    def __post_init__(self):
        check_fields(self, "TrainConfig")
        problems = []
        for name in ("steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not self.lr > 0:
            problems.append(f"lr must be positive (got {self.lr})")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} is unknown; choose one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is unknown; choose one of {PRECISIONS}")
        if not self.seeds:
            problems.append("seeds is empty; give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be distinct (got {self.seeds})")
        if not 0 <= self.final_lr_fraction <= 1:
            problems.append("final_lr_fraction must lie in [0, 1]")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append("grad_clip must be positive (or None to disable)")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["seeds"] = list(self.seeds)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def data_seeds(self) -> tuple[int, ...]:
        return tuple(self.data_seed if self.data_seed is not None else s for s in self.seeds)


@struct.dataclass
class TrainState:
    """Everything a run needs to continue bit-identically. Leaves carry a leading
    `model` axis when several models train together."""

    params: Any
    opt_state: Any
    step: jax.Array  # int32: updates applied so far
    rng: jax.Array  # uint32 [2]: raw PRNG key data (serialisable)


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    final = cfg.lr * cfg.final_lr_fraction
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.final_lr_fraction)
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(cfg.lr, final, decay_steps)
    else:
        main = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps == 0:
        return main
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    # decay weight matrices only: norms, biases and vectors keep their scale. Block
    # leaves carry a leading `layer` axis, so a block matrix has rank 3 (or 4 per head).
    def decay_mask(params):
        mask = {name: np.ndim(value) >= 2 for name, value in params.items() if name != "blocks"}
        mask["blocks"] = {name: np.ndim(value) >= 3 for name, value in params["blocks"].items()}
        return mask

    adamw = optax.adamw(
        learning_rate_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)


def init_state(model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> TrainState:
    """A fresh state for one model (no leading model axis)."""
    key = jax.random.PRNGKey(seed)
    init_key, rng = jax.random.split(key)
    params = init_params(init_key, model_cfg)
    opt_state = make_optimizer(train_cfg).init(params)
    return TrainState(params=params, opt_state=opt_state, step=jnp.zeros((), jnp.int32), rng=rng)


def init_states(model_cfg: ModelConfig, train_cfg: TrainConfig) -> TrainState:
    """States for every seed, stacked on a leading `model` axis."""
    states = [init_state(model_cfg, train_cfg, s) for s in train_cfg.seeds]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def training_loss(model_cfg: ModelConfig, train_cfg: TrainConfig):
    """`loss(params, tokens [batch, pos]) -> scalar`: the mean next-token loss, in mixed
    precision when `train_cfg.precision` asks (the parameters cast to bfloat16 inside,
    so gradients flow back to the float32 master copy in float32)."""
    if train_cfg.precision == "float32":
        return lambda params, tokens: mean_loss(params, tokens, model_cfg)
    if model_cfg.dtype != "float32":
        raise ValueError(
            f"precision={train_cfg.precision!r} keeps float32 master weights: the model's "
            f"dtype must be float32 (got {model_cfg.dtype!r})"
        )
    half_cfg = model_cfg.replace(dtype="bfloat16", compute_dtype="bfloat16")

    def loss(params, tokens):
        half = jax.tree_util.tree_map(lambda w: w.astype(jnp.bfloat16), params)
        return mean_loss(half, tokens, half_cfg)

    return loss


def make_update(model_cfg: ModelConfig, train_cfg: TrainConfig):
    """`update(state, tokens [batch, pos]) -> (state, loss)` for one model (traceable)."""
    optimizer = make_optimizer(train_cfg)
    loss_fn = training_loss(model_cfg, train_cfg)

    def update(state: TrainState, tokens: jax.Array):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, tokens)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, state.rng), loss

    return update


def make_train_step(model_cfg: ModelConfig, train_cfg: TrainConfig, shardings=None):
    """`step(states, tokens [model, batch, pos]) -> (states, losses [model])`, one compiled
    call for every model. The input states' buffers are donated (updated in place).

    shardings: `TrainShardings` to run on a mesh (the states and tokens must already
    lie as they say, `mechjax.model.sharding.place`); the losses come back replicated,
    readable on every process."""
    update = jax.vmap(make_update(model_cfg, train_cfg))
    if shardings is None:
        return jax.jit(update, donate_argnums=0)
    return jax.jit(
        update,
        donate_argnums=0,
        in_shardings=(shardings.state, shardings.tokens),
        out_shardings=(shardings.state, sharding.replicated(shardings.mesh)),
    )


@dataclasses.dataclass(frozen=True)
class TrainShardings:
    """Where a training state and its batches lie on `mesh`."""

    mesh: Mesh
    state: Any  # a TrainState of NamedShardings
    tokens: NamedSharding  # [model, batch, pos]


def train_shardings(state_like, mesh: Mesh, *, fsdp: bool = False) -> TrainShardings:
    """Shardings for states shaped like `state_like` (arrays or `jax.eval_shape`
    structs): the `model` axis over the mesh's `seed` axis, parameters and Adam moments
    replicated over `data` or, with `fsdp`, split over it (`mechjax.model.sharding`)."""
    n_models = len(jax.tree_util.tree_leaves(state_like.params)[0])
    if n_models % mesh.shape["seed"]:
        raise ValueError(
            f"the mesh's seed axis ({mesh.shape['seed']}) must divide the number of models "
            f"trained together ({n_models}); choose another mesh or number of seeds"
        )
    state = sharding.stacked_shardings(state_like, state_like.params, mesh, fsdp=fsdp)
    return TrainShardings(mesh, state, sharding.batch_sharding(mesh, 3, seed_axis=True))
