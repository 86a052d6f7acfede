"""Benchmarks that measure StreamQuant against its peers side by side, in one run."""
