"""HuggingFace checkpoints <-> mechjax params and `ModelConfig`, for every family mechjax reads.

    params, cfg = load_hf("path/to/pythia-70m")   # config.json + *.safetensors
    save_hf(params, cfg, "out/")                  # config.json + model.safetensors

A HuggingFace folder holds `config.json` and either `model.safetensors` or shards
`model-0000x-of-0000y.safetensors` listed in `model.safetensors.index.json`.
`config.json`'s `model_type` picks the family (`hf_config`: Gemma 1/2/3, GPT-2,
GPT-NeoX / Pythia, Llama / Mistral / Qwen 2); the family names the tensors and their
layouts (`hf_tensors`). A multimodal `gemma3` checkpoint contributes its language model
only.

Loading reads the safetensors headers first, checks every name and shape (one ValueError
lists every missing, unexpected and mis-shaped tensor), then copies shard by shard,
tensor by tensor, from memory maps straight into preallocated stacked arrays of the
requested dtype: the model is never held twice, and nothing is compiled before the
checks pass.

The files are read by our own reader (`safetensors_io`), not by the `safetensors`
library, because the library's reads copy: `safe_open(file, framework="numpy")` reads
bfloat16 (once `ml_dtypes` is imported, as jax does) but `get_tensor` / `get_slice`
return arrays backed by a fresh `bytearray`, never by the file's map, so every tensor
is copied twice (file -> library array -> its place in the stacked, transposed, cast
array) instead of once. Measured with `experiments/benchmarks/load_safetensors.py` (a
Llama-like ~1 GiB file read warm into stacked `[layer, in, out]` arrays, the embedding
last; 2-core machine, median of 5 fresh processes, three runs): the library's peak
anonymous memory is higher by its largest tensor in every run (float32: 1,236 vs 970
MiB; bfloat16: 1,170 vs 1,025 MiB; bfloat16 read as float32: 2,195 vs 2,050 MiB; for a
256k-token embedding the extra is 1-2 GiB), while neither is consistently faster: the
transposing copies both readers need dominate (library vs ours in the quietest run:
float32 1.41 vs 1.40 s, bfloat16 1.64 vs 1.85 s, bfloat16 -> float32 3.97 vs 3.90 s; the
library led some rows in one run and trailed in another, and the runs differ by up to 2x
on this shared machine). The library stays the tests' reference for the format
(`tests/test_hf_gemma.py`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import jax
import numpy as np

from ..model.config import ModelConfig
from ..model.params import Params, check_params, param_shapes
from .hf_config import family_of_config, family_of_model_type
from .hf_family import HFFamily
from .hf_tensors import hf_names, hf_shape, our_shape, to_hf, to_ours
from .safetensors_io import DTYPES, SafetensorsFile, read_header, save_safetensors

__all__ = ["load_hf", "save_hf"]

_FLOAT_TAGS = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


# -- reading a folder ------------------------------------------------------------------------


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


def _prefixes(family: HFFamily, names, folder: str) -> tuple[str, str]:
    """(the text model's prefix, the untied unembedding's full name) in this folder."""
    for body in family.body_prefixes:
        if body + family.embedding in names:
            break
    else:
        raise ValueError(
            f"{folder}: no {family.embedding} under any of the prefixes "
            f"{list(family.body_prefixes)}; is this a {family.name} checkpoint?"
        )
    head = next((h for h in family.head_names if h in names), family.head_names[0])
    return body, head


def load_hf(path: str | os.PathLike, dtype: str | None = None) -> tuple[Params, ModelConfig]:
    """Load a HuggingFace folder (`config.json` + safetensors) as `(params, cfg)`.

    Families: Gemma 1/2/3, GPT-2, GPT-NeoX (Pythia), Llama, Mistral, Qwen 2 (by
    `config.json`'s `model_type`). `dtype` ("float32", "bfloat16", "float16") casts the
    weights and sets `cfg.dtype`; None keeps the dtype the embedding is stored in.
    Raises ValueError for an unknown `model_type` or an unsupported setting, and names
    every missing, unexpected and mis-shaped tensor before any weight is copied.
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder; pass the HuggingFace model directory")
    raw = _read_json(os.path.join(folder, "config.json"))
    if not isinstance(raw, dict):
        raise ValueError(f"{folder}/config.json must hold a JSON object")
    family = family_of_model_type(raw.get("model_type"))
    cfg = family.config(raw, name=os.path.basename(os.path.normpath(folder)))
    located = _locate_tensors(folder)
    body, head = _prefixes(family, located, folder)

    if dtype is None:
        dtype = _FLOAT_TAGS.get(located[body + family.embedding][1].dtype, "float32")
    if dtype not in _FLOAT_TAGS.values():
        raise ValueError(
            f"dtype={dtype!r} is not supported; choose one of {list(_FLOAT_TAGS.values())}"
        )
    cfg = cfg.replace(dtype=dtype)

    shapes = param_shapes(cfg)
    expected = hf_names(family.tensors(cfg), cfg.n_layers, body=body, layer=family.layer, head=head)
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
        tied_head = cfg.tied_embeddings and name in family.head_names  # HF ignores it too
        if not (tied_head or family.ignores(name)):
            problems.append(f"unexpected {name}")
    if problems:
        raise ValueError(
            f"{folder} does not match its config.json ({len(problems)} problems): "
            + "; ".join(problems)
        )

    # preallocate the stacked arrays, then fill them shard by shard from memory maps
    np_dtype = DTYPES[next(t for t, d in _FLOAT_TAGS.items() if d == dtype)]
    out = {k: _aligned_empty(s, np_dtype) for k, s in shapes.items() if k != "blocks"}
    out["blocks"] = {k: _aligned_empty(s, np_dtype) for k, s in shapes["blocks"].items()}
    by_file = defaultdict(list)
    for name, (entry, layer) in expected.items():
        by_file[located[name][0]].append((name, entry, layer))
    for file, items in by_file.items():
        with SafetensorsFile(file) as f:
            for name, entry, layer in items:
                shape = our_shape(shapes, entry)
                for part, view in zip(entry.parts, to_ours(entry.layout, f[name], shape)):
                    target = out["blocks"][part][layer] if entry.per_layer else out[part]
                    _copy_into(target, view)
                f.release(name)
    # on a CPU, JAX adopts each aligned buffer as it is (no copy); elsewhere it copies
    # the leaf to the device and the host copy is freed before the next one
    params = {k: _to_device(out.pop(k)) for k in list(out) if k != "blocks"}
    blocks = out.pop("blocks")
    params["blocks"] = {k: _to_device(blocks.pop(k)) for k in list(blocks)}
    return params, cfg


_ALIGNMENT = 64  # JAX's CPU client adopts host buffers aligned to this many bytes


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary, so that
    `jax.device_put` on a CPU wraps it instead of copying it (numpy's own large
    allocations sit 16 bytes past a page boundary: the copy doubled the loader's peak
    at each leaf and cost ~0.3 s per GiB of fresh pages)."""
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n_bytes + _ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % _ALIGNMENT
    return raw[skip : skip + n_bytes].view(dtype).reshape(shape)


def _copy_into(dst: np.ndarray, src: np.ndarray, block: int = 64) -> None:
    """dst[...] = src, casting (float32 -> bfloat16 rounds to nearest even, as torch does).

    Equal dtypes are copied as unsigned integers of their width (a plain bit copy; for
    bfloat16 1.5x faster than through ml_dtypes). A transposed view is copied in strips
    along dst's last axis, which are runs of whole rows of the stored tensor: measured
    2-4x faster than one strided copy for float32.
    """
    if dst.dtype == src.dtype:
        bits = np.dtype(f"u{dst.dtype.itemsize}")
        dst, src = dst.view(bits), src.view(bits)
    if src.flags.c_contiguous:
        np.copyto(dst, src, casting="unsafe")
        return
    for start in range(0, dst.shape[-1], block):
        np.copyto(
            dst[..., start : start + block], src[..., start : start + block], casting="unsafe"
        )


def _to_device(x: np.ndarray) -> jax.Array:
    # jnp.asarray would go through a second, transient copy
    return jax.device_put(x).block_until_ready()


# -- writing a folder ------------------------------------------------------------------------


def save_hf(params: Params, cfg: ModelConfig, path: str | os.PathLike) -> None:
    """Write `params` as a HuggingFace folder (`config.json` + `model.safetensors`) that
    `transformers` (`AutoModelForCausalLM.from_pretrained`) and `load_hf` read.

    The family follows from `cfg` (`hf_config.family_of_config`); a ValueError names
    what of `cfg` it cannot express, before anything is written. Holds one HF-layout
    copy of the weights while writing.
    """
    check_params(params, cfg)
    family = family_of_config(cfg)
    config = family.config_dict(cfg)
    host = jax.tree_util.tree_map(np.asarray, params)
    names = hf_names(
        family.tensors(cfg),
        cfg.n_layers,
        body=family.body_prefixes[0],
        layer=family.layer,
        head=family.head_names[0],
    )
    tensors = {}
    for name, (entry, layer) in names.items():
        parts = [host["blocks"][p][layer] if entry.per_layer else host[p] for p in entry.parts]
        tensors[name] = to_hf(entry.layout, parts)
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    save_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
