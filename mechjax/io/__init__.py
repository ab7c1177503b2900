"""Checkpoints in and out.

- `load_hf(path)` / `save_hf(params, cfg, path)`: HuggingFace folders (`config.json` +
  safetensors, sharded or not) of Gemma 1/2/3, GPT-2, GPT-NeoX / Pythia, Llama, Mistral
  and Qwen 2. `hf.py` reads and writes the folder; `hf_config.py` translates
  `config.json` (`hf_config`, `hf_config_dict`) through the family modules
  (`hf_gemma.py`, `hf_gpt2.py`, `hf_gpt_neox.py`, `hf_llama.py`; what they provide:
  `hf_family.py`); `hf_tensors.py` maps tensor layouts; `safetensors_io.py` is the file
  format.
- `to_transformer_lens` / `from_transformer_lens` / `to_hooked_transformer`: toys to and
  from TransformerLens (torch is imported only when these run).
- `save_model` / `load_model`: orbax checkpoints of `(params, cfg)`.
"""

from .hf import load_hf, save_hf
from .hf_config import hf_config, hf_config_dict
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
    "hf_config",
    "hf_config_dict",
    "load_hf",
    "load_model",
    "save_hf",
    "save_model",
    "to_hooked_transformer",
    "to_transformer_lens",
]
