"""One training loop for every task; methods enter as callbacks (their sparsity callbacks live in
smcbench.methods)."""

from smcbench.training.callbacks import Callback, LoopState
from smcbench.training.evaluation import batched_outputs
from smcbench.training.loop import TrainConfig, TrainResult, loss_value, train
from smcbench.training.schedules import SCHEDULES, register_schedule

__all__ = ["SCHEDULES", "Callback", "LoopState", "TrainConfig", "TrainResult", "batched_outputs", "loss_value",
           "register_schedule", "train"]
