"""Methods: objects registered by name (`register_method`), each declaring what the runner needs and the schema of
its settings. `paper` holds SMC-Bench's methods; `callbacks` their sparsity callbacks for the training loop. Methods
of other packages come in through the `smcbench.methods` entry-point group, loaded once the built-ins are."""

from smcbench.errors import SmcBenchError
from smcbench.methods import learned, obert, paper, posttraining, scratch, structured  # noqa: F401  (register them)
from smcbench.methods.base import (
    DENSE,
    METHODS,
    PLUGIN_CLASH,
    Experiment,
    ForwardShape,
    Method,
    NoSettings,
    Outcome,
    SelectionSettings,
    SparseSettings,
    get_method,
    is_reference,
    is_sparse,
    load_plugins,
    method_settings,
    register_method,
)
from smcbench.methods.callbacks import GradualPruning, MaskEnforcer, RigLUpdates

try:
    load_plugins()
except SmcBenchError as err:  # a clash: said by the CLI as one line, raised by get_method for library use
    PLUGIN_CLASH.append(str(err))

__all__ = ["DENSE", "METHODS", "PLUGIN_CLASH", "Experiment", "ForwardShape", "GradualPruning", "MaskEnforcer", "Method",
           "NoSettings", "Outcome", "RigLUpdates", "SelectionSettings", "SparseSettings", "get_method", "is_reference",
           "is_sparse", "load_plugins", "method_settings", "register_method"]
