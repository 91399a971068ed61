"""Benchmarks: each prints a table (and writes it as markdown under bench/results/). Never run in tests."""
