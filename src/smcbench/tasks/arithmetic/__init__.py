"""Arithmetic reasoning (MAWPS, ASDiv-A, SVAMP): data and expression evaluation so far; the GTS and Graph2Tree
models and the task registration come with their issue."""
