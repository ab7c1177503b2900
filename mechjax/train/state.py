"""Training options, the `TrainState` pytree and the jitted update step.

The step is `optax` AdamW behind global-norm clipping, with a linear warm-up followed by
a cosine / linear / constant schedule. Several models of the same shape (seeds or
configurations) train together as one compiled step: every state carries a leading
`model` axis and the step is `jit(vmap(update))`.
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

from ..model.checks import check_fields
from ..model.config import ModelConfig
from ..model.losses import mean_loss
from ..model.params import init_params

SCHEDULES = ("cosine", "linear", "constant")


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


def make_update(model_cfg: ModelConfig, train_cfg: TrainConfig):
    """`update(state, tokens [batch, pos]) -> (state, loss)` for one model (traceable)."""
    optimizer = make_optimizer(train_cfg)

    def update(state: TrainState, tokens: jax.Array):
        loss, grads = jax.value_and_grad(mean_loss)(state.params, tokens, model_cfg)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, state.rng), loss

    return update


def make_train_step(model_cfg: ModelConfig, train_cfg: TrainConfig):
    """`step(states, tokens [model, batch, pos]) -> (states, losses [model])`, one compiled
    call for every model. The input states' buffers are donated (updated in place)."""
    return jax.jit(jax.vmap(make_update(model_cfg, train_cfg)), donate_argnums=0)
