"""Benchmarks: speed of the Digital Original, the detector and start-up, apart from tests."""
