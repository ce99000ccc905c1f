"""Arithmetic reasoning: GTS and Graph2Tree on MAWPS, ASDiv-A (5-fold CV) and SVAMP."""

from smcbench.tasks.arithmetic import task  # noqa: F401  (registers the datasets)
