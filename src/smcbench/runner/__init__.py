"""Runs on top of tasks, methods and the training loop: one method at a time here; the grid comes later."""
