"""smc-bench: benchmark sparse neural network algorithms on hard, diverse tasks."""

__version__ = "0.1.0"
