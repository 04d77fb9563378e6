"""The public contract of ASTRO serving: config, block layout, graph tensors, limits, request batches (numpy only)."""
