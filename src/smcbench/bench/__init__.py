"""Benchmarks: figures and ratios against anchors measured in the same run. Not tests."""
