"""Training toy models while tracking the induction-head phase change.

from mechjax.train import TrainConfig, train
result = train(model_cfg, TrainConfig(steps=3000), dataset, "runs/attn2")
"""

from .checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .loop import RunResult, StepReport, TrainingDiverged, schedules, train
from .spec import build_from_spec
from .state import (
    TrainConfig,
    TrainState,
    init_state,
    init_states,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    make_update,
)

__all__ = [
    "RunResult",
    "StepReport",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "build_from_spec",
    "init_state",
    "init_states",
    "latest_checkpoint",
    "learning_rate_schedule",
    "list_checkpoints",
    "load_checkpoint",
    "make_optimizer",
    "make_train_step",
    "make_update",
    "save_checkpoint",
    "schedules",
    "train",
]
