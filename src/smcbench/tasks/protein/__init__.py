"""Protein thermostability: HP-S2C2 and HP-S2C5 (10 folds each) with ESM-style sequence models."""

from smcbench.tasks.protein import task  # noqa: F401  (registers the datasets)
