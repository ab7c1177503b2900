"""Named presets of toy models: a model config, a training recipe and a dataset.

Each preset is a JSON file in this folder:

    {"description": "...",
     "model": {ModelConfig fields, d_vocab may be "auto" (taken from the dataset)},
     "train": {TrainConfig fields},
     "data":  {"name": dataset name, ...dataset options}}

`mechjax train --preset NAME` starts from one and every field can be overridden.
"""

from __future__ import annotations

import json
from importlib import resources


def list_presets() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".json")
    )


def load_preset(name: str) -> dict:
    path = resources.files(__name__) / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; presets are {list_presets()}")
    return json.loads(path.read_text())
