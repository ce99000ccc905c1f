"""Task families behind one registry. A family is a sub-package that registers its datasets on import; a task
never imports another task, and the sparsity engine never imports a task."""

from smcbench.tasks.registry import TaskRun, TaskSpec, get_task, known_tasks, register_task

__all__ = ["TaskRun", "TaskSpec", "get_task", "known_tasks", "register_task"]
