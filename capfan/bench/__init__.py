"""Benchmarks behind `capfan bench`: each prints a table of ratios against baselines run alongside."""
