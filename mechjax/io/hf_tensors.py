"""Where each HuggingFace Gemma tensor goes in mechjax params, and how it is laid out.

HF `nn.Linear` stores `[out, in]`; ours are `x @ W` (see `mechjax.model.params`):

| HF (under `model.layers.{i}.`)     | mechjax (`blocks`, stacked on `layer`)               |
|------------------------------------|------------------------------------------------------|
| self_attn.q_proj [head*d_head, d_model] | W_Q [head, d_model, d_head]                     |
| self_attn.k_proj / v_proj          | W_K / W_V [kv_head, d_model, d_head]                 |
| self_attn.o_proj [d_model, head*d_head] | W_O [head, d_head, d_model]                     |
| self_attn.q_norm / k_norm          | q_norm_w / k_norm_w [d_head]            (Gemma 3)    |
| input_layernorm                    | ln1_w                                                |
| post_attention_layernorm           | ln1_post_w (Gemma 2/3); ln2_w, the pre-MLP norm (Gemma 1) |
| pre_feedforward_layernorm          | ln2_w                                   (Gemma 2/3)  |
| post_feedforward_layernorm         | ln2_post_w                              (Gemma 2/3)  |
| mlp.gate_proj / up_proj / down_proj | W_gate (activated) / W_in (linear) / W_out, transposed |

plus `model.embed_tokens` -> W_E, `model.norm` -> ln_final_w and, for untied embeddings,
`lm_head` [vocab, d_model] -> W_U [d_model, vocab]. Gemma's RMSNorm multiplies by
`1 + w` and checkpoints store `w`; mechjax keeps `w` with `norm_weight_offset=1`.

`gemma_tensors(cfg)` lists the entries of this table that a config has, `hf_names(cfg,
body, head)` spells out every full HF tensor name, and `to_ours` / `to_hf` / `hf_shape`
convert one tensor between the two layouts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One HF tensor: its name under the text model's prefix, our name and how to convert.

    layouts (HF -> ours, per layer):
      copy        same shape
      transpose   [out, in] -> [in, out]
      heads_in    [n*d_head, d_model] -> [n, d_model, d_head]     (q/k/v_proj)
      heads_out   [d_model, head*d_head] -> [head, d_head, d_model] (o_proj)
      heads_bias  [n*d_head] -> [n, d_head]
    """

    hf: str  # "layers.{i}." is prepended for per-layer tensors
    ours: str
    layout: str = "copy"
    per_layer: bool = True
    lm_head: bool = False  # lives outside the text model ("lm_head.weight")


def gemma_tensors(cfg: ModelConfig) -> list[HFTensor]:
    """The tensors a Gemma checkpoint of this config holds (one entry per kind)."""
    attn = "self_attn."
    entries = [
        HFTensor("embed_tokens.weight", "W_E", per_layer=False),
        HFTensor("norm.weight", "ln_final_w", per_layer=False),
        HFTensor(attn + "q_proj.weight", "W_Q", "heads_in"),
        HFTensor(attn + "k_proj.weight", "W_K", "heads_in"),
        HFTensor(attn + "v_proj.weight", "W_V", "heads_in"),
        HFTensor(attn + "o_proj.weight", "W_O", "heads_out"),
        HFTensor("input_layernorm.weight", "ln1_w"),
        HFTensor("mlp.gate_proj.weight", "W_gate", "transpose"),
        HFTensor("mlp.up_proj.weight", "W_in", "transpose"),
        HFTensor("mlp.down_proj.weight", "W_out", "transpose"),
    ]
    if not cfg.tied_embeddings:
        entries.append(HFTensor("lm_head.weight", "W_U", "transpose", False, lm_head=True))
    if cfg.use_attn_bias:
        entries += [
            HFTensor(attn + "q_proj.bias", "b_Q", "heads_bias"),
            HFTensor(attn + "k_proj.bias", "b_K", "heads_bias"),
            HFTensor(attn + "v_proj.bias", "b_V", "heads_bias"),
            HFTensor(attn + "o_proj.bias", "b_O"),
        ]
    if cfg.qk_norm:
        entries += [
            HFTensor(attn + "q_norm.weight", "q_norm_w"),
            HFTensor(attn + "k_norm.weight", "k_norm_w"),
        ]
    if cfg.post_attn_norm:  # Gemma 2/3 naming
        entries += [
            HFTensor("post_attention_layernorm.weight", "ln1_post_w"),
            HFTensor("pre_feedforward_layernorm.weight", "ln2_w"),
        ]
    else:  # Gemma 1: "post_attention_layernorm" is the norm before the MLP
        entries.append(HFTensor("post_attention_layernorm.weight", "ln2_w"))
    if cfg.post_mlp_norm:
        entries.append(HFTensor("post_feedforward_layernorm.weight", "ln2_post_w"))
    return entries


def hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF shape of a tensor whose shape in our layout (one layer) is `ours`."""
    if layout == "transpose":
        return ours[::-1]
    if layout == "heads_in":  # ours [n, d_model, d_head]
        return (ours[0] * ours[2], ours[1])
    if layout == "heads_out":  # ours [head, d_head, d_model]
        return (ours[2], ours[0] * ours[1])
    if layout == "heads_bias":
        return (ours[0] * ours[1],)
    return ours


def to_ours(layout: str, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    """A view (no copy) of HF tensor `x` in our layout `ours`."""
    if layout == "transpose":
        return x.T
    if layout == "heads_in":
        n, d_model, d_head = ours
        return x.reshape(n, d_head, d_model).transpose(0, 2, 1)
    if layout == "heads_out":
        n, d_head, d_model = ours
        return x.reshape(d_model, n, d_head).transpose(1, 2, 0)
    return x.reshape(ours)


def to_hf(layout: str, w: np.ndarray) -> np.ndarray:
    """Our tensor `w` (one layer) in the HF layout; the inverse of `to_ours`."""
    if layout == "transpose":
        return w.T
    if layout == "heads_in":
        return w.transpose(0, 2, 1).reshape(-1, w.shape[1])
    if layout == "heads_out":
        return w.transpose(2, 0, 1).reshape(w.shape[2], -1)
    if layout == "heads_bias":
        return w.reshape(-1)
    return w


def hf_names(cfg: ModelConfig, body: str, head: str) -> dict[str, tuple[HFTensor, int | None]]:
    """Full HF tensor name -> (entry, layer index or None). `body` prefixes the text
    model's tensors ("model." in a Gemma 1/2/3 text checkpoint), `head` the `lm_head`."""
    names = {}
    for entry in gemma_tensors(cfg):
        if entry.lm_head:
            names[head + entry.hf] = (entry, None)
        elif not entry.per_layer:
            names[body + entry.hf] = (entry, None)
        else:
            for i in range(cfg.n_layers):
                names[f"{body}layers.{i}.{entry.hf}"] = (entry, i)
    return names


def our_shape(shapes: dict, entry: HFTensor) -> tuple[int, ...]:
    """One layer's shape of `entry` in `mechjax.model.params.param_shapes(cfg)` (`shapes`)."""
    return shapes["blocks"][entry.ours][1:] if entry.per_layer else shapes[entry.ours]
