"""What a HuggingFace model family module provides, and the `config.json` conventions the
families share (RoPE parameters, activations, what a config cannot express).

A family module (`hf_gemma`, `hf_gpt2`, `hf_gpt_neox`, `hf_llama`) exports one `HFFamily`:
its `config.json` <-> `ModelConfig` translations, its tensor table (`hf_tensors.HFTensor`)
and how its folders name tensors. `hf_config` picks the family of a `config.json` (by
`model_type`) or of a `ModelConfig`; `hf` reads and writes the folders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..model.config import ModelConfig
from .hf_tensors import HFTensor


@dataclasses.dataclass(frozen=True)
class HFFamily:
    """One HuggingFace model family.

    config(raw, *, dtype, name): a `config.json` dict -> `ModelConfig` (ValueError on what
        mechjax cannot run).
    config_dict(cfg): the `config.json` dict that maps back to `cfg`, or a ValueError
        naming what of `cfg` the family cannot express.
    tensors(cfg): the tensors a checkpoint of `cfg` holds, one `HFTensor` per kind.
    embedding: the token embedding's name under the body prefix; finding it finds the
        prefix. body_prefixes: where the text model's tensors may live (the first is
        written). layer: the per-layer prefix ("layers.{i}."). head_names: the full names
        an untied unembedding may have (the first is written). ignored: name fragments of
        tensors that carry nothing mechjax needs (buffers, a multimodal model's other
        parts); a tied unembedding stored anyway is ignored too.
    """

    name: str
    model_types: tuple[str, ...]
    config: Callable[..., ModelConfig]
    config_dict: Callable[[ModelConfig], dict]
    tensors: Callable[[ModelConfig], list[HFTensor]]
    embedding: str
    body_prefixes: tuple[str, ...]
    layer: str
    head_names: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    def ignores(self, name: str) -> bool:
        """Whether `name` contains one of `ignored` starting at a dot-separated component."""
        return any(f".{part}" in f".{name}" for part in self.ignored)


# -- config.json -> ModelConfig ----------------------------------------------------------------

# HF activation names (transformers' ACT2FN) -> ModelConfig.act_fn
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
ROPE_TYPES = ("default", "linear", "llama3")


def activation(name: str) -> str:
    """`ModelConfig.act_fn` of an HF activation name, or a ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"config.json's activation {name!r} is not supported; mechjax runs "
            f"{sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def with_defaults(raw: dict, defaults: dict) -> dict:
    """`raw` over the HF config class's defaults (a field absent from config.json takes
    the class's default, as HF does; an explicit null stays null)."""
    return {**defaults, **raw}


def rope_parameters(raw: dict, default_theta: float = 10_000.0) -> dict:
    """One flat RoPE dict from either spelling: transformers 5's `rope_parameters`, or an
    older checkpoint's `rope_scaling` beside `rope_theta`. `rope_type` is always set."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    params.setdefault("rope_theta", raw.get("rope_theta", default_theta))
    if "partial_rotary_factor" in raw:  # HF moves a top-level one into the dict
        params.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def rope_fields(params: dict, max_positions: int, which: str = "RoPE") -> dict:
    """The `ModelConfig` RoPE fields of a flat RoPE dict (`rope_parameters`): default,
    linear and Llama 3 scaling; any other `rope_type` (dynamic, yarn, longrope, ...) is a
    ValueError naming it."""
    kind = params["rope_type"]
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"{which} has rope_type={kind!r}; mechjax implements "
            + ", ".join(repr(k) for k in ROPE_TYPES)
            + " (load a checkpoint without this RoPE scaling, or drop it from config.json "
            "for contexts within the original length)"
        )
    fields = dict(rope_base=float(params["rope_theta"]))
    if kind == "linear":
        fields.update(rope_scaling=float(params["factor"]), rope_scaling_type="linear")
    elif kind == "llama3":
        missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in params]
        if missing:
            raise ValueError(f"{which}: llama3 rope scaling needs {missing} in rope_parameters")
        fields.update(
            rope_scaling=float(params["factor"]),
            rope_scaling_type="llama3",
            rope_low_freq_factor=float(params["low_freq_factor"]),
            rope_high_freq_factor=float(params["high_freq_factor"]),
            rope_original_n_ctx=int(params.get("original_max_position_embeddings", max_positions)),
        )
    return fields


def check_local_rope(layer_types, fields: dict) -> None:
    """mechjax never scales RoPE on sliding-window layers (HF Gemma 3's rule); a family
    that scales every layer cannot have both."""
    if layer_types and "local" in layer_types and fields.get("rope_scaling", 1.0) != 1.0:
        raise ValueError(
            "RoPE scaling on sliding-window layers is not supported (mechjax scales the "
            "global layers only); this checkpoint has both"
        )


# -- ModelConfig -> config.json ----------------------------------------------------------------


def mismatches(cfg: ModelConfig, wanted: dict) -> list[str]:
    """`field=value (needs wanted)` for every field of `cfg` that differs from `wanted`."""
    return [
        f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v
    ]


def refuse(cfg: ModelConfig, family: str, problems: list[str]) -> None:
    """Raise the ValueError listing what of `cfg` the family cannot express, if anything."""
    if problems:
        raise ValueError(
            f"config {cfg.name!r} has no HuggingFace {family} equivalent: " + "; ".join(problems)
        )


def hf_rope_parameters(cfg: ModelConfig) -> dict:
    """The transformers-5 `rope_parameters` dict of `cfg`'s (global-layer) RoPE."""
    out = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling_type == "llama3":
        out.update(
            rope_type="llama3",
            factor=cfg.rope_scaling,
            low_freq_factor=cfg.rope_low_freq_factor,
            high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_n_ctx,
        )
    elif cfg.rope_scaling != 1.0:
        out.update(rope_type="linear", factor=cfg.rope_scaling)
    return out


def hf_activation(act_fn: str, tanh_name: str = "gelu_new") -> str:
    """The HF activation name of `act_fn` (`tanh_name` for the tanh-approximate GELU)."""
    return {"gelu": "gelu", "gelu_tanh": tanh_name, "silu": "silu", "relu": "relu"}[act_fn]
