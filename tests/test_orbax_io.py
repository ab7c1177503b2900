"""Saving and loading (params, cfg) with orbax: bitwise round trips, overwrite safety,
atomic writes and clear errors for missing or damaged checkpoints."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model

import mechjax as mj
from mechjax.io.orbax_io import load_model, save_model


def _bitwise_equal(a, b) -> bool:
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
            return False
    return True


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["attn0", "gemma1_mqa", "mlp_gelu"])  # 0 layers; tied; biases
def test_round_trip_is_bitwise(tmp_path, name, dtype):
    cfg = SMALL_CONFIGS[name].replace(dtype=dtype)
    params = random_model(cfg)
    written = save_model(tmp_path / "model", params, cfg)
    assert written == (tmp_path / "model").absolute()
    loaded, loaded_cfg = load_model(tmp_path / "model")
    assert loaded_cfg == cfg
    assert _bitwise_equal(loaded, params)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(loaded))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left


def test_refuses_to_overwrite_unless_asked(tmp_path):
    cfg = SMALL_CONFIGS["attn1_nonorm"]
    path = tmp_path / "ckpt"
    save_model(path, random_model(cfg, seed=0), cfg)
    with pytest.raises(FileExistsError, match=r"ckpt already exists.*overwrite=True"):
        save_model(path, random_model(cfg, seed=1), cfg)

    other_cfg = SMALL_CONFIGS["attn2_ln_bias"]
    new_params = random_model(other_cfg, seed=2)
    save_model(path, new_params, other_cfg, overwrite=True)
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == other_cfg and _bitwise_equal(loaded, new_params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_never_replaces_something_that_is_not_a_checkpoint(tmp_path):
    cfg = SMALL_CONFIGS["attn0"]
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("important")
    file = tmp_path / "file.bin"
    file.write_bytes(b"data")
    for path in (folder, file):
        with pytest.raises(FileExistsError, match="not a mechjax checkpoint"):
            save_model(path, random_model(cfg), cfg, overwrite=True)
    assert (folder / "keep.txt").read_text() == "important" and file.read_bytes() == b"data"


def test_failed_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    cfg = SMALL_CONFIGS["attn1_nonorm"]
    params = random_model(cfg)
    save_model(tmp_path / "old", params, cfg)

    def crash(self):
        raise RuntimeError("disk full")

    # the config is written after the arrays: a crash there must leave nothing behind
    monkeypatch.setattr(mj.ModelConfig, "to_json", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(tmp_path / "new", params, cfg)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(tmp_path / "old", random_model(cfg, seed=5), cfg, overwrite=True)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    loaded, _ = load_model(tmp_path / "old")  # the previous checkpoint is intact
    assert _bitwise_equal(loaded, params)


def test_save_validates_before_writing(tmp_path):
    cfg = SMALL_CONFIGS["attn2_ln_bias"]
    params = random_model(SMALL_CONFIGS["attn1_nonorm"])
    with pytest.raises(ValueError, match="params do not match the config"):
        save_model(tmp_path / "bad", params, cfg)
    with pytest.raises(ValueError, match="mechjax.ModelConfig"):
        save_model(tmp_path / "bad", params, cfg.to_dict())
    assert not list(tmp_path.iterdir())


@pytest.fixture
def saved(tmp_path):
    cfg = SMALL_CONFIGS["mlp_relu"]
    return save_model(tmp_path / "ckpt", random_model(cfg), cfg)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_missing_or_corrupt_config(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json .*corrupt"):
        load_model(saved)
    (saved / "config.json").write_text(json.dumps({"d_model": 8}))
    with pytest.raises(ValueError, match="not a valid ModelConfig"):
        load_model(saved)
    (saved / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json .*missing"):
        load_model(saved)


def test_config_that_does_not_match_the_arrays(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["d_mlp"] = 16
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"blocks.W_in has shape \(1, 24, 32\), expected"):
        load_model(saved)


def test_damaged_arrays(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["leaves"]["W_E"]["shape"] = [36, 24]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"inconsistent: W_E is float32\[37, 24\]"):
        load_model(saved)
    for item in (saved / "params").iterdir():  # the array data itself
        if item.name != "_CHECKPOINT_METADATA":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    with pytest.raises(ValueError, match="could not read the arrays"):
        load_model(saved)
    shutil.rmtree(saved / "params")
    with pytest.raises(ValueError, match="params/ is missing"):
        load_model(saved)
