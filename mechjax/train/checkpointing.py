"""Training checkpoints with orbax-checkpoint.

Layout of a run's `checkpoints/` folder:

    step_00000123/          one complete checkpoint (a directory is complete or absent)
        state/              orbax: TrainState (params, optimiser state, step, rng)
        config.json         model and training configs

A checkpoint is written into `step_XXXXXXXX.partial/` and renamed into place when
complete, so an interrupted write never leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from ..config import ModelConfig
from .state import TrainConfig, TrainState, init_states

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[int]:
    """Steps of the complete checkpoints under `root`, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / "config.json").is_file() and (entry / "state").is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def save_checkpoint(
    root: Path, state: TrainState, model_cfg: ModelConfig, train_cfg: TrainConfig
) -> Path:
    """Write the state at its current step; returns the checkpoint directory."""
    step = int(jax.device_get(state.step).reshape(-1)[0])
    final = checkpoint_dir(root, step)
    if final.exists():
        return final  # the same step is already saved (e.g. Ctrl-C right after a save)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an earlier interrupted write: never a finished checkpoint
    partial.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((partial / "state").absolute(), state)
    checkpointer.wait_until_finished()
    checkpointer.close()
    meta = {"step": step, "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    (partial / "config.json").write_text(json.dumps(meta, indent=2))
    os.replace(partial, final)
    return final


def read_checkpoint_config(path: Path) -> tuple[ModelConfig, TrainConfig, int]:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a mechjax training checkpoint (no config.json)")
    try:
        meta = json.loads(config_file.read_text())
        return (
            ModelConfig.from_dict(meta["model"]),
            TrainConfig.from_dict(meta["train"]),
            int(meta["step"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"checkpoint config {config_file} is corrupted ({err}); use an earlier checkpoint"
        ) from err


def load_checkpoint(path: Path) -> tuple[TrainState, ModelConfig, TrainConfig]:
    """Restore a training checkpoint directory (`.../checkpoints/step_XXXXXXXX`)."""
    path = Path(path)
    model_cfg, train_cfg, _ = read_checkpoint_config(path)
    abstract = jax.eval_shape(lambda: init_states(model_cfg, train_cfg))
    checkpointer = ocp.StandardCheckpointer()
    try:
        state = checkpointer.restore((path / "state").absolute(), abstract)
    except Exception as err:  # orbax raises many types for damaged files
        raise ValueError(
            f"could not restore the checkpoint at {path}: {type(err).__name__}: {err}. "
            "The files are damaged or incomplete; delete this step directory to resume "
            "from the previous checkpoint."
        ) from err
    finally:
        checkpointer.close()
    return state, model_cfg, train_cfg


def latest_checkpoint(root: Path) -> Path | None:
    steps = list_checkpoints(root)
    return checkpoint_dir(root, steps[-1]) if steps else None
