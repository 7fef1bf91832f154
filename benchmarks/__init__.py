"""Benchmarks: each prints a table and writes JSON, markdown and a PNG under benchmarks/results/."""
