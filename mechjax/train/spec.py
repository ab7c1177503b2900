"""A training run from a preset's spec (`toy_models/*.json`, after overrides): the
model config, the training config and the dataset, validated before data is loaded."""

from __future__ import annotations

import dataclasses

from ..data import make_dataset
from ..model.config import ModelConfig
from .state import TrainConfig


def build_from_spec(spec: dict):
    """(model config, train config, dataset) from a resolved preset."""
    model = dict(spec["model"])
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(model) - fields)
    if unknown:
        raise ValueError(f"unknown model fields {unknown}; valid: {sorted(fields)}")
    train_cfg = TrainConfig.from_dict(spec["train"])  # validates before data is loaded
    data_options = dict(spec["data"])
    dataset = make_dataset(data_options.pop("name"), **data_options)
    if model.get("d_vocab", "auto") == "auto":
        model["d_vocab"] = dataset.vocab_size
    model.setdefault("n_ctx", dataset.n_ctx)
    return ModelConfig(**model), train_cfg, dataset
