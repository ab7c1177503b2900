"""Checkpoints in and out.

- `load_hf_gemma(path)` / `save_hf_gemma(params, cfg, path)`: HuggingFace Gemma 1/2/3
  folders (`config.json` + safetensors, sharded or not); `hf.py` reads and writes the
  folder, `hf_config.py` translates `config.json` (`hf_gemma_config`), `hf_tensors.py`
  maps tensor names and layouts, `safetensors_io.py` is the file format.
- `to_transformer_lens` / `from_transformer_lens` / `to_hooked_transformer`: toys to and
  from TransformerLens (torch is imported only when these run).
- `save_model` / `load_model`: orbax checkpoints of `(params, cfg)`.
"""

from .hf import load_hf_gemma, save_hf_gemma
from .hf_config import hf_gemma_config
from .orbax_io import load_model, save_model
from .transformer_lens import (
    from_hooked_transformer,
    from_transformer_lens,
    to_hooked_transformer,
    to_transformer_lens,
)

__all__ = [
    "from_hooked_transformer",
    "from_transformer_lens",
    "hf_gemma_config",
    "load_hf_gemma",
    "load_model",
    "save_hf_gemma",
    "save_model",
    "to_hooked_transformer",
    "to_transformer_lens",
]
