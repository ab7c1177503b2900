"""HuggingFace `config.json` <-> mechjax `ModelConfig`, for every family mechjax reads.

- `hf_config(raw)`: a `config.json` dict -> `ModelConfig`, through the family of its
  `model_type`; an unknown `model_type` is a ValueError listing those mechjax reads.
- `hf_config_dict(cfg)`: the `config.json` dict of the family that represents `cfg`, or a
  ValueError naming what of `cfg` that family cannot express.
- `family_of_model_type(model_type)` / `family_of_config(cfg)`: the `hf_family.HFFamily`.

The families: `hf_gemma` (gemma, gemma2, gemma3, gemma3_text), `hf_gpt2` (gpt2),
`hf_gpt_neox` (gpt_neox), `hf_llama` (llama, mistral, qwen2).
"""

from __future__ import annotations

from ..model.config import ModelConfig
from .hf_family import HFFamily
from .hf_gemma import GEMMA
from .hf_gpt2 import GPT2
from .hf_gpt_neox import GPT_NEOX
from .hf_llama import LLAMA

FAMILIES: tuple[HFFamily, ...] = (GEMMA, GPT2, GPT_NEOX, LLAMA)
MODEL_TYPES: tuple[str, ...] = tuple(sorted(t for f in FAMILIES for t in f.model_types))


def family_of_model_type(model_type) -> HFFamily:
    """The family that reads `config.json`s of this `model_type`, or a ValueError."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"config.json has model_type={model_type!r}; mechjax reads {', '.join(MODEL_TYPES)} "
        "(pass the folder of a causal language model of one of these types)"
    )


def family_of_config(cfg: ModelConfig) -> HFFamily:
    """The family whose checkpoints can hold `cfg`, chosen by its norm and positions:
    Gemma's `(1 + w)` norms or scaled embeddings; learned positions: GPT-2; LayerNorm with
    RoPE: GPT-NeoX; RMSNorm with RoPE: Llama. That family's `config_dict` then names
    anything else of `cfg` it cannot express."""
    gemma_like = (
        cfg.norm_weight_offset == 1.0
        or cfg.scale_embeddings
        or cfg.post_attn_norm
        or cfg.qk_norm
        or cfg.attn_logit_softcap
        or cfg.final_logit_softcap
    )
    if gemma_like:
        return GEMMA
    if cfg.positional == "learned":
        return GPT2
    if cfg.positional == "rope" and cfg.normalization == "layernorm":
        return GPT_NEOX
    if cfg.positional == "rope" and cfg.normalization == "rmsnorm":
        return LLAMA
    raise ValueError(
        f"config {cfg.name!r} has no HuggingFace equivalent: positional={cfg.positional!r} "
        f"with normalization={cfg.normalization!r} (mechjax writes GPT-2: learned positions "
        "and LayerNorm; GPT-NeoX: RoPE and LayerNorm; Llama / Gemma: RoPE and RMSNorm)"
    )


def hf_config(raw: dict, *, dtype: str = "float32", name: str = "") -> ModelConfig:
    """Map a HuggingFace `config.json` (as a dict) to a `ModelConfig`."""
    if not isinstance(raw, dict):
        raise ValueError(f"config.json must hold a JSON object, got {type(raw).__name__}")
    return family_of_model_type(raw.get("model_type")).config(raw, dtype=dtype, name=name)


def hf_config_dict(cfg: ModelConfig) -> dict:
    """The transformers-5 style `config.json` dict that `hf_config` maps back to `cfg`."""
    return family_of_config(cfg).config_dict(cfg)
