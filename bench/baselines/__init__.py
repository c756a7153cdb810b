"""Baselines the benchmarks compare mjhook against (each a file of its own, runnable alone)."""
