"""HuggingFace Gemma 1 / 2 / 3 checkpoints <-> mechjax params and `ModelConfig`.

    params, cfg = load_hf_gemma("path/to/gemma-2-2b")   # config.json + *.safetensors
    save_hf_gemma(params, cfg, "out/")                  # config.json + model.safetensors

A HuggingFace folder holds `config.json` and either `model.safetensors` or shards
`model-0000x-of-0000y.safetensors` listed in `model.safetensors.index.json`. A multimodal
`gemma3` checkpoint contributes its language model only (weights under `language_model.`).
`config.json` is translated by `hf_config`, tensor names and layouts by `hf_tensors`; the
safetensors files are read and written by `safetensors_io`.

Loading reads the safetensors headers first, checks every name and shape (one ValueError
lists every missing, unexpected and mis-shaped tensor), then copies shard by shard, via
memory maps, straight into preallocated stacked arrays: the model is never held twice.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import jax
import numpy as np

from ..model.config import ModelConfig
from ..model.params import Params, check_params, param_shapes
from .hf_config import hf_gemma_config, hf_gemma_config_dict
from .hf_tensors import hf_names, hf_shape, our_shape, to_hf, to_ours
from .safetensors_io import DTYPES, SafetensorsFile, read_header, save_safetensors

__all__ = ["hf_gemma_config", "hf_gemma_config_dict", "load_hf_gemma", "save_hf_gemma"]

_FLOAT_TAGS = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


# -- reading a folder ------------------------------------------------------------------------

_BODY_PREFIXES = ("model.", "language_model.model.", "model.language_model.", "")
_HEAD_PREFIXES = ("", "language_model.")
_MULTIMODAL_PARTS = ("vision_tower.", "multi_modal_projector.")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing; a HuggingFace model folder needs it") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def _locate_tensors(folder: str) -> dict[str, tuple[str, object]]:
    """name -> (file, TensorInfo) over the single file or all shards (headers only)."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        files = {single: None}
    elif os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' object")
        files = defaultdict(set)
        for name, file in weight_map.items():
            files[os.path.join(folder, file)].add(name)
        absent = sorted(f for f in files if not os.path.exists(f))
        if absent:
            raise ValueError(f"{index} lists shard files that are missing: {absent}")
    else:
        raise ValueError(
            f"{folder} has neither model.safetensors nor model.safetensors.index.json; "
            "save the model with save_pretrained(..., safe_serialization=True)"
        )
    located, problems = {}, []
    for file, listed in files.items():
        tensors = read_header(file)[0]
        if listed is not None and set(tensors) != listed:
            problems.append(
                f"{os.path.basename(file)} disagrees with the index "
                f"(only in index: {sorted(listed - set(tensors))[:5]}, "
                f"only in file: {sorted(set(tensors) - listed)[:5]})"
            )
        for name, info in tensors.items():
            if name in located:
                problems.append(f"{name} is stored twice")
            located[name] = (file, info)
    if problems:
        raise ValueError(f"{folder}: inconsistent shards: " + "; ".join(problems))
    return located


def _prefixes(names, folder: str) -> tuple[str, str]:
    for body in _BODY_PREFIXES:
        if body + "embed_tokens.weight" in names:
            break
    else:
        raise ValueError(
            f"{folder}: no embed_tokens.weight under any of the prefixes {list(_BODY_PREFIXES)}; "
            "is this a Gemma checkpoint?"
        )
    head = next((p for p in _HEAD_PREFIXES if p + "lm_head.weight" in names), "")
    if body == "language_model.model.":  # older multimodal Gemma 3 keeps the head beside it
        head = "language_model."
    return body, head


def _ignorable(name: str, multimodal: bool, tied: bool) -> bool:
    """Tensors that carry nothing a causal text model needs."""
    if name.endswith("rotary_emb.inv_freq"):  # a derived buffer some old checkpoints kept
        return True
    if tied and name.endswith("lm_head.weight"):  # tied: HF itself ignores it (W_U = W_E.T)
        return True
    return multimodal and any(part in name for part in _MULTIMODAL_PARTS)


def load_hf_gemma(path: str | os.PathLike, dtype: str | None = None) -> tuple[Params, ModelConfig]:
    """Load a HuggingFace Gemma 1/2/3 folder as `(params, cfg)`.

    `dtype` ("float32", "bfloat16", "float16") casts the weights and sets `cfg.dtype`;
    None keeps the dtype the embedding is stored in. Raises ValueError naming every
    missing, unexpected and mis-shaped tensor before any weight is copied.
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder; pass the HuggingFace model directory")
    raw = _read_json(os.path.join(folder, "config.json"))
    cfg = hf_gemma_config(raw, name=os.path.basename(os.path.normpath(folder)))
    located = _locate_tensors(folder)
    body, head = _prefixes(located, folder)

    if dtype is None:
        dtype = _FLOAT_TAGS.get(located[body + "embed_tokens.weight"][1].dtype, "float32")
    if dtype not in _FLOAT_TAGS.values():
        raise ValueError(
            f"dtype={dtype!r} is not supported; choose one of {list(_FLOAT_TAGS.values())}"
        )
    cfg = cfg.replace(dtype=dtype)

    shapes = param_shapes(cfg)
    expected = hf_names(cfg, body, head)
    multimodal = raw.get("model_type") == "gemma3"
    problems = []
    for name, (entry, _) in expected.items():
        want = hf_shape(entry.layout, our_shape(shapes, entry))
        if name not in located:
            problems.append(f"missing {name} {list(want)}")
            continue
        info = located[name][1]
        if tuple(info.shape) != want:
            problems.append(f"{name} has shape {list(info.shape)}, expected {list(want)}")
        if info.dtype not in _FLOAT_TAGS:
            problems.append(f"{name} has dtype {info.dtype}, expected one of {list(_FLOAT_TAGS)}")
    for name in sorted(set(located) - set(expected)):
        if not _ignorable(name, multimodal, cfg.tied_embeddings):
            problems.append(f"unexpected {name}")
    if problems:
        raise ValueError(
            f"{folder} does not match its config.json ({len(problems)} problems): "
            + "; ".join(problems)
        )

    # preallocate the stacked arrays, then fill them shard by shard from memory maps
    np_dtype = DTYPES[next(t for t, d in _FLOAT_TAGS.items() if d == dtype)]
    out = {k: np.empty(s, np_dtype) for k, s in shapes.items() if k != "blocks"}
    out["blocks"] = {k: np.empty(s, np_dtype) for k, s in shapes["blocks"].items()}
    by_file = defaultdict(list)
    for name, (entry, layer) in expected.items():
        by_file[located[name][0]].append((name, entry, layer))
    for file, items in by_file.items():
        with SafetensorsFile(file) as f:
            for name, entry, layer in items:
                target = out["blocks"][entry.ours][layer] if entry.per_layer else out[entry.ours]
                _copy_into(target, to_ours(entry.layout, f[name], target.shape))
    # hand each leaf to JAX and free its host copy before the next one; waiting for the
    # (asynchronous) transfer keeps at most one leaf in flight
    params = {k: _to_device(out.pop(k)) for k in list(out) if k != "blocks"}
    blocks = out.pop("blocks")
    params["blocks"] = {k: _to_device(blocks.pop(k)) for k in list(blocks)}
    return params, cfg


def _copy_into(dst: np.ndarray, src: np.ndarray, block: int = 64) -> None:
    """dst[...] = src, casting (float32 -> bfloat16 rounds to nearest even, as torch does).

    A transposed view is copied in strips along dst's last axis, which are runs of whole
    rows of the stored tensor: measured 2-4x faster than one strided copy for float32.
    """
    if src.flags.c_contiguous:
        np.copyto(dst, src, casting="unsafe")
        return
    for start in range(0, dst.shape[-1], block):
        np.copyto(
            dst[..., start : start + block], src[..., start : start + block], casting="unsafe"
        )


def _to_device(x: np.ndarray) -> jax.Array:
    # device_put copies once; jnp.asarray goes through a second transient copy
    return jax.device_put(x).block_until_ready()


def save_hf_gemma(params: Params, cfg: ModelConfig, path: str | os.PathLike) -> None:
    """Write `params` as a HuggingFace folder (`config.json` + `model.safetensors`) that
    `transformers` (GemmaForCausalLM / Gemma2ForCausalLM / Gemma3ForCausalLM) and
    `load_hf_gemma` read. Holds one HF-layout copy of the weights while writing."""
    check_params(params, cfg)
    config = hf_gemma_config_dict(cfg)
    host = jax.tree_util.tree_map(np.asarray, params)
    tensors = {}
    for name, (entry, layer) in hf_names(cfg, "model.", "").items():
        w = host["blocks"][entry.ours][layer] if entry.per_layer else host[entry.ours]
        tensors[name] = to_hf(entry.layout, w)
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    save_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
