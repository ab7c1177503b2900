"""Training checkpoints on disk, readable without the training loop.

Layout of a run's `checkpoints/` folder:

    step_00000123/          one complete checkpoint (a directory is complete or absent)
        state/              orbax: the training state (params, optimiser state, step, rng),
                            every leaf with a leading `model` axis (one entry per seed)
        config.json         {"step": int, "model": ModelConfig.to_dict(), "train": {...}}

A checkpoint is written into `step_XXXXXXXX.partial/` and renamed into place when
complete, so an interrupted write never leaves a directory that looks finished. Sharded
states are written as they lie (orbax stores each array's pieces and reassembles them
for whatever devices restore it); with several processes all of them write together and
process 0 makes, finishes and renames the folder (`mechjax.distributed`). The
training loop (`mechjax.train.checkpointing`) restores the whole typed state; analyses,
SAE training and LLC estimation read the parameters alone with `load_checkpoint_params`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ..distributed import barrier, is_coordinator
from ..model.config import ModelConfig
from ..model.params import check_params

STATE_DIR = "state"
CONFIG_FILE = "config.json"
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
        if match and (entry / CONFIG_FILE).is_file() and (entry / STATE_DIR).is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_checkpoint(root: Path) -> Path | None:
    steps = list_checkpoints(root)
    return checkpoint_dir(root, steps[-1]) if steps else None


def save_checkpoint(root: Path, step: int, state, meta: dict) -> Path:
    """Write the pytree `state` and `{"step": step, **meta}` as the checkpoint of `step`;
    returns its directory. A step already saved is left as it is."""
    final = checkpoint_dir(root, step)
    if final.exists():
        return final  # the same step is already saved (e.g. Ctrl-C right after a save)
    partial = final.with_name(final.name + ".partial")
    if is_coordinator():
        if partial.exists():
            shutil.rmtree(partial)  # an earlier interrupted write: never a finished checkpoint
        partial.mkdir(parents=True)
    barrier(f"mechjax-checkpoint-{step}-made")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((partial / STATE_DIR).absolute(), state)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if is_coordinator():
        (partial / CONFIG_FILE).write_text(json.dumps({"step": step, **meta}, indent=2))
        os.replace(partial, final)
    barrier(f"mechjax-checkpoint-{step}-done")
    return final


def read_checkpoint_meta(path: Path) -> dict:
    """The checkpoint's `config.json`, with its model config checked: a ValueError names
    a corrupted file, a FileNotFoundError a directory that is no checkpoint."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a mechjax training checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(config_file.read_text())
        ModelConfig.from_dict(meta["model"])
        int(meta["step"])
        return meta
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"checkpoint config {config_file} is corrupted ({err}); use an earlier checkpoint"
        ) from err


def restore_checkpoint(path: Path, abstract=None):
    """The saved state: as the pytree `abstract` (from `jax.eval_shape`; its leaves'
    shardings say where the arrays go) when given, else as nested dicts of arrays on
    this process's first device. Either way the devices that saved it do not matter."""
    path = Path(path)
    checkpointer = ocp.StandardCheckpointer()
    try:
        if abstract is None:
            abstract = _on_first_device(checkpointer.metadata((path / STATE_DIR).absolute()))
        return checkpointer.restore((path / STATE_DIR).absolute(), abstract)
    except Exception as err:  # orbax raises many types for damaged files
        raise ValueError(
            f"could not restore the checkpoint at {path}: {type(err).__name__}: {err}. "
            "The files are damaged or incomplete; delete this step directory to resume "
            "from the previous checkpoint."
        ) from err
    finally:
        checkpointer.close()


def _on_first_device(metadata):
    """A restore target from a checkpoint's metadata: every array on the first local
    device (orbax would otherwise insist on the devices that saved it)."""
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), tree
    )


def load_checkpoint_params(path: Path, model: int = 0) -> tuple[dict, ModelConfig, int]:
    """`(params, cfg, step)` of one model of a training checkpoint (`model`: its index
    among the seeds trained together), without the optimiser state's types."""
    meta = read_checkpoint_meta(path)
    cfg = ModelConfig.from_dict(meta["model"])
    state = restore_checkpoint(path)
    if not isinstance(state, dict) or "params" not in state:
        raise ValueError(f"the checkpoint at {path} holds no parameters under {STATE_DIR}/")
    n_models = len(jax.tree_util.tree_leaves(state["params"])[0])
    if not 0 <= model < n_models:
        raise ValueError(f"model index {model} out of range: the checkpoint holds {n_models}")
    params = jax.tree_util.tree_map(lambda x: np.asarray(x)[model], state["params"])
    check_params(params, cfg)
    return params, cfg, int(meta["step"])
