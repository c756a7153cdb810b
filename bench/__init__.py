"""Benchmarks of issue 3: see bench/README.md."""
