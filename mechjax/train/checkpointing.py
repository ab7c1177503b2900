"""Saving and restoring the whole training state (format and files: `mechjax.io.run_checkpoints`)."""

from __future__ import annotations

from pathlib import Path

import jax

from ..io.run_checkpoints import (
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint_meta,
    restore_checkpoint,
)
from ..io.run_checkpoints import save_checkpoint as save_state
from ..model.config import ModelConfig
from .state import TrainConfig, TrainState, init_states, train_shardings

__all__ = [
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]


def save_checkpoint(
    root: Path,
    state: TrainState,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    step: int | None = None,
) -> Path:
    """Write the state at `step` (default: read off the state, which needs it readable
    on this process); returns the checkpoint directory. A sharded state is saved as it
    lies, each process writing its devices' pieces."""
    if step is None:
        step = int(jax.device_get(state.step).reshape(-1)[0])
    meta = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    return save_state(root, step, state, meta)


def read_checkpoint_config(path: Path) -> tuple[ModelConfig, TrainConfig, int]:
    meta = read_checkpoint_meta(path)
    try:
        train_cfg = TrainConfig.from_dict(meta["train"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"checkpoint config {Path(path) / 'config.json'} is corrupted ({err}); use an "
            "earlier checkpoint"
        ) from err
    return ModelConfig.from_dict(meta["model"]), train_cfg, int(meta["step"])


def load_checkpoint(
    path: Path, mesh=None, *, fsdp: bool = False
) -> tuple[TrainState, ModelConfig, TrainConfig]:
    """Restore a training checkpoint directory (`.../checkpoints/step_XXXXXXXX`), on
    `mesh` as `train_shardings` places it (default: on the first device), whatever the
    devices it was saved from."""
    model_cfg, train_cfg, _ = read_checkpoint_config(path)
    abstract = jax.eval_shape(lambda: init_states(model_cfg, train_cfg))
    if mesh is None:
        shardings = jax.tree_util.tree_map(
            lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), abstract
        )
    else:
        shardings = train_shardings(abstract, mesh, fsdp=fsdp).state
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return restore_checkpoint(path, target), model_cfg, train_cfg
