"""How a HuggingFace tensor maps onto mechjax params: the `HFTensor` record and the layouts.

Each family module (`hf_gemma`, `hf_gpt2`, `hf_gpt_neox`, `hf_llama`) lists its tensors as
`HFTensor`s; this module converts one tensor between HF's layout and ours, and spells out
the full names of a checkpoint's tensors. Ours are `x @ W` (see `mechjax.model.params`);
HF's `nn.Linear` stores `[out, in]`, GPT-2's `Conv1D` stores `[in, out]`, and some
families fuse the query, key and value projections into one tensor.

Layouts (HF -> ours, one layer; `n` heads, `e` = d_head, `d` = d_model):

| layout          | HF                         | ours                                    |
|-----------------|----------------------------|-----------------------------------------|
| copy            | any                        | the same shape (or reshaped to ours)    |
| transpose       | `[out, in]`                | `[in, out]`                             |
| heads_in        | `[n*e, d]`                 | `[n, d, e]`          (q/k/v_proj)       |
| heads_out       | `[d, n*e]`                 | `[n, e, d]`          (o_proj, dense)    |
| heads_rows      | `[n*e, d]`                 | `[n, e, d]`          (GPT-2 c_proj)     |
| heads_bias      | `[n*e]`                    | `[n, e]`                                |
| conv1d_qkv      | `[d, 3*n*e]`: q, k, v      | W_Q, W_K, W_V `[n, d, e]` (GPT-2 c_attn)|
| qkv_bias        | `[3*n*e]`: q, k, v         | b_Q, b_K, b_V `[n, e]`                  |
| neox_qkv        | `[n*3*e, d]`: per head q, k, v | W_Q, W_K, W_V `[n, d, e]` (query_key_value) |
| neox_qkv_bias   | `[n*3*e]`: per head q, k, v | b_Q, b_K, b_V `[n, e]`                  |

A fused tensor has several of ours (`HFTensor.ours` is then a tuple), all of one shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# layout -> how many of our tensors one HF tensor holds (1 unless listed)
FUSED = {"conv1d_qkv": 3, "qkv_bias": 3, "neox_qkv": 3, "neox_qkv_bias": 3}
LAYOUTS = ("copy", "transpose", "heads_in", "heads_out", "heads_rows", "heads_bias", *FUSED)


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One HF tensor: its name under the text model's prefix, our name(s), its layout.

    hf: the name under the body prefix; per-layer tensors get the family's layer prefix
        ("layers.{i}.", GPT-2's "h.{i}.") in front. For the untied unembedding
        (`lm_head`) it is the name the family writes; the folder's own spelling is
        looked up when loading.
    ours: our parameter name, or a tuple of names for a fused tensor (`FUSED`).
    """

    hf: str
    ours: str | tuple[str, ...]
    layout: str = "copy"
    per_layer: bool = True
    lm_head: bool = False  # the untied unembedding, outside the text model

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; known: {LAYOUTS}")
        if len(self.parts) != FUSED.get(self.layout, 1):
            raise ValueError(f"layout {self.layout!r} needs {FUSED.get(self.layout, 1)} names")

    @property
    def parts(self) -> tuple[str, ...]:
        """Our names this tensor fills (one, or q, k, v of a fused tensor)."""
        return self.ours if isinstance(self.ours, tuple) else (self.ours,)


def hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF shape of a tensor whose parts each have shape `ours` (one layer)."""
    if layout == "transpose":
        return ours[::-1]
    if layout == "heads_in":  # ours [n, d_model, d_head]
        return (ours[0] * ours[2], ours[1])
    if layout == "heads_out":  # ours [head, d_head, d_model]
        return (ours[2], ours[0] * ours[1])
    if layout == "heads_rows":  # ours [head, d_head, d_model]
        return (ours[0] * ours[1], ours[2])
    if layout == "heads_bias":
        return (ours[0] * ours[1],)
    if layout == "conv1d_qkv":  # ours [n, d_model, d_head] each
        return (ours[1], 3 * ours[0] * ours[2])
    if layout == "neox_qkv":
        return (3 * ours[0] * ours[2], ours[1])
    if layout in ("qkv_bias", "neox_qkv_bias"):  # ours [n, d_head] each
        return (3 * ours[0] * ours[1],)
    return ours


def to_ours(layout: str, x: np.ndarray, ours: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Views (no copy) of HF tensor `x` in our layout: one per part, each of shape `ours`."""
    if layout == "transpose":
        return (x.T,)
    if layout == "heads_in":
        n, d_model, d_head = ours
        return (x.reshape(n, d_head, d_model).transpose(0, 2, 1),)
    if layout == "heads_out":
        n, d_head, d_model = ours
        return (x.reshape(d_model, n, d_head).transpose(1, 2, 0),)
    if layout == "conv1d_qkv":  # columns: [q | k | v], each [head, d_head]
        n, d_model, d_head = ours
        y = x.reshape(d_model, 3, n, d_head)
        return tuple(y[:, j].transpose(1, 0, 2) for j in range(3))
    if layout == "qkv_bias":
        y = x.reshape(3, *ours)
        return tuple(y[j] for j in range(3))
    if layout == "neox_qkv":  # rows: per head, [q, k, v] each d_head
        n, d_model, d_head = ours
        y = x.reshape(n, 3, d_head, d_model)
        return tuple(y[:, j].transpose(0, 2, 1) for j in range(3))
    if layout == "neox_qkv_bias":
        y = x.reshape(ours[0], 3, ours[1])
        return tuple(y[:, j] for j in range(3))
    return (x.reshape(ours),)  # copy, heads_rows, heads_bias


def to_hf(layout: str, parts: Sequence[np.ndarray]) -> np.ndarray:
    """Our tensor(s) `parts` (one layer) in the HF layout; the inverse of `to_ours`."""
    if layout == "conv1d_qkv":
        stacked = np.stack([w.transpose(1, 0, 2) for w in parts], axis=1)  # [d, 3, n, e]
        return stacked.reshape(stacked.shape[0], -1)
    if layout == "qkv_bias":
        return np.stack(parts).reshape(-1)
    if layout == "neox_qkv":
        stacked = np.stack([w.transpose(0, 2, 1) for w in parts], axis=1)  # [n, 3, e, d]
        return stacked.reshape(-1, stacked.shape[-1])
    if layout == "neox_qkv_bias":
        return np.stack(parts, axis=1).reshape(-1)
    (w,) = parts
    if layout == "transpose":
        return w.T
    if layout == "heads_in":
        return w.transpose(0, 2, 1).reshape(-1, w.shape[1])
    if layout == "heads_out":
        return w.transpose(2, 0, 1).reshape(w.shape[2], -1)
    if layout in ("heads_rows", "heads_bias"):
        return w.reshape(-1, *w.shape[2:])
    return w


def hf_names(
    entries: Sequence[HFTensor], n_layers: int, *, body: str, layer: str, head: str | None = None
) -> dict[str, tuple[HFTensor, int | None]]:
    """Full HF tensor name -> (entry, layer index or None).

    body: the prefix of the text model's tensors ("model.", "transformer.", ...); layer:
    the per-layer prefix with `{i}` for the index ("layers.{i}."); head: the full name of
    the untied unembedding in this folder (None: the entry's own name).
    """
    names = {}
    for entry in entries:
        if entry.lm_head:
            names[head or entry.hf] = (entry, None)
        elif not entry.per_layer:
            names[body + entry.hf] = (entry, None)
        else:
            for i in range(n_layers):
                names[body + layer.format(i=i) + entry.hf] = (entry, i)
    return names


def our_shape(shapes: dict, entry: HFTensor) -> tuple[int, ...]:
    """One layer's shape of each part of `entry` in `mechjax.model.params.param_shapes(cfg)`
    (`shapes`)."""
    name = entry.parts[0]
    return tuple(shapes["blocks"][name][1:] if entry.per_layer else shapes[name])
