"""Benchmarks (not tests): ``python -m bench`` (``make bench``) runs every section and writes ``docs/bench/``;
``python -m bench.overload``, ``python -m bench.replicas``, ``python -m bench.block_attention`` and
``python -m bench.training`` run one alone. Timings are printed and recorded, never asserted."""
