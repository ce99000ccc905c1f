"""Multilingual translation: mBART fine-tuned many-to-many through English on 2, 5 or 10 languages."""

from smcbench.tasks.translation import task  # noqa: F401  (registers the tasks)
