"""Bare-library baselines for the load benchmarks: the floor a driver built on them can reach."""
