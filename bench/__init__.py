"""Benchmarks (not tests): each module is a CLI, ``python -m bench.<name> --help``."""
