"""Save and load a model, `(params, cfg)`, as one directory.

    save_model(path, params, cfg, *, overwrite=False)
    load_model(path) -> (params, cfg)

Layout:

    path/
      config.json     cfg.to_json(), read back with ModelConfig.from_json
      manifest.json   {"format": "mechjax-orbax", "version": 1,
                       "leaves": {"W_E": {"shape": [...], "dtype": "float32"},
                                  "blocks/W_Q": {...}, ...}}
      params/         an orbax-checkpoint (StandardCheckpointHandler) of the params

Arrays are written as they are (bitwise; bfloat16 included). Orbax refuses zero-size
arrays, which a 0-layer model's `blocks` are made of: those live only in the manifest
and are rebuilt, with their dtype, on load.

Writing is atomic: everything goes into a temporary sibling directory that is renamed to
`path` once complete, so a crash leaves either no checkpoint or a whole one (never a
directory without its config). With `overwrite=True` an existing checkpoint is first
renamed aside and deleted after the new one is in place; a path holding anything other
than a mechjax checkpoint is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..model.checks import check_config
from ..model.config import ModelConfig
from ..model.params import Params, check_params

FORMAT = "mechjax-orbax"
VERSION = 1
_CONFIG, _MANIFEST, _PARAMS = "config.json", "manifest.json", "params"


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"blocks/W_Q": array, ...}."""
    flat = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = np.asarray(value)
    return flat


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, name = path.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return tree


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / _MANIFEST).is_file() and (path / _CONFIG).is_file()


def save_model(path, params: Params, cfg: ModelConfig, *, overwrite: bool = False) -> Path:
    """Write `params` and `cfg` to the directory `path` (created; returns its absolute path).

    Raises FileExistsError if `path` exists, unless `overwrite=True` and it is a mechjax
    checkpoint; ValueError if `params` do not match `cfg`.
    """
    check_config(cfg)
    check_params(params, cfg)
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True to replace it (or choose a new path)"
            )
        if not _is_checkpoint(path):
            raise FileExistsError(
                f"{path} exists and is not a mechjax checkpoint; refusing to replace it even "
                "with overwrite=True (remove it yourself or choose another path)"
            )

    flat = _flatten(params)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "leaves": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in flat.items()},
    }
    stored = _unflatten({k: v for k, v in flat.items() if v.size})  # orbax refuses empty arrays

    import orbax.checkpoint as ocp  # imported here: orbax takes ~1 s to import

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with process_local_checkpointer() as checkpointer:
            checkpointer.save(tmp / _PARAMS, args=ocp.args.StandardSave(stored))
        (tmp / _CONFIG).write_text(cfg.to_json())
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def process_local_checkpointer():
    """An orbax checkpointer for host arrays that this process alone reads or writes: a
    model directory is written by one process of a multi-process run (process 0) and
    read by each on its own, so no process waits for the others."""
    import jax
    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.Checkpointer(ocp.StandardCheckpointHandler())
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(
        ocp.StandardCheckpointHandler(multiprocessing_options=options),
        multiprocessing_options=options,
    )


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise ValueError(
            f"{path.parent} is not a complete mechjax checkpoint: {path.name} ({what}) is "
            "missing. Write checkpoints with mechjax.io.orbax_io.save_model."
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} ({what}) is corrupt: {err}") from err


def load_model(path) -> tuple[Params, ModelConfig]:
    """Read `(params, cfg)` written by `save_model`; params are jax arrays, bitwise equal
    to those saved. Raises FileNotFoundError for a missing path and ValueError for a
    directory that is not a complete, consistent mechjax checkpoint."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no mechjax checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory; a mechjax checkpoint is a directory")

    try:
        cfg = ModelConfig.from_dict(_read_json(path / _CONFIG, "the model config"))
    except TypeError as err:  # missing required fields
        raise ValueError(f"{path / _CONFIG} is not a valid ModelConfig: {err}") from err
    manifest = _read_json(path / _MANIFEST, "the list of arrays")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path / _MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"{path} was written in format version {manifest.get('version')}; this mechjax "
            f"reads version {VERSION}"
        )
    if not (path / _PARAMS).is_dir():
        raise ValueError(f"{path} is not a complete mechjax checkpoint: {_PARAMS}/ is missing")

    try:
        with process_local_checkpointer() as checkpointer:
            restored = _flatten(checkpointer.restore(path / _PARAMS))
    except Exception as err:  # orbax/tensorstore raise many kinds; all mean "unreadable"
        raise ValueError(f"could not read the arrays in {path / _PARAMS}: {err}") from err

    flat, problems = {}, []
    for name, info in manifest["leaves"].items():
        shape, dtype = tuple(info["shape"]), np.dtype(jnp.dtype(info["dtype"]))
        if 0 in shape:
            flat[name] = np.zeros(shape, dtype)
        elif name not in restored:
            problems.append(f"{name} is missing")
        elif restored[name].shape != shape or restored[name].dtype != dtype:
            got = restored[name]
            problems.append(
                f"{name} is {got.dtype}{list(got.shape)}, expected {dtype}{list(shape)}"
            )
        else:
            flat[name] = restored[name]
    problems += [
        f"{name} is not in the manifest" for name in restored if name not in manifest["leaves"]
    ]
    if problems:
        raise ValueError(f"checkpoint {path} is inconsistent: " + "; ".join(problems))

    params = _unflatten({name: jnp.asarray(value) for name, value in flat.items()})
    check_params(params, cfg)
    return params, cfg
