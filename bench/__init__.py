"""Benchmarks (not tests): ``python -m bench`` (``make bench``) runs every section and writes
``docs/bench/``; ``python -m bench.block_attention`` and ``python -m bench.compare_served`` are
focused CLIs. Timings are printed and recorded, never asserted."""
