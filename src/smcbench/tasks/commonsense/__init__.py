"""Commonsense reasoning: CSQA, WinoGrande, RACE-M and RACE-H as multiple choice."""

from smcbench.tasks.commonsense import task  # noqa: F401  (registers the datasets)
