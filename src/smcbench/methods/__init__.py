"""Methods: objects registered by name (`register_method`), each declaring what the runner needs and the schema of
its settings. `paper` holds SMC-Bench's methods; `callbacks` their sparsity callbacks for the training loop."""

from smcbench.methods import learned, obert, paper, posttraining, scratch  # noqa: F401  (register the methods)
from smcbench.methods.base import (
    DENSE,
    METHODS,
    Experiment,
    Method,
    NoSettings,
    Outcome,
    SelectionSettings,
    SparseSettings,
    get_method,
    is_sparse,
    method_settings,
    register_method,
)
from smcbench.methods.callbacks import GradualPruning, MaskEnforcer, RigLUpdates

__all__ = ["DENSE", "METHODS", "Experiment", "GradualPruning", "MaskEnforcer", "Method", "NoSettings", "Outcome",
           "RigLUpdates", "SelectionSettings", "SparseSettings", "get_method", "is_sparse", "method_settings",
           "register_method"]
