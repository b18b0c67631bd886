"""Benchmarks: side-by-side measurements reported in the README."""
