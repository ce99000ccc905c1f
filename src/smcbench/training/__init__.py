"""One training loop for every task; sparsity enters as callbacks."""

from smcbench.training.callbacks import Callback, GradualPruning, MaskEnforcer, RigLUpdates
from smcbench.training.loop import TrainConfig, TrainResult, train

__all__ = ["Callback", "GradualPruning", "MaskEnforcer", "RigLUpdates", "TrainConfig", "TrainResult", "train"]
