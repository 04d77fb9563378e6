"""The public contract of ASTRO serving: config, block layout, graph tensors and limits (numpy only)."""
