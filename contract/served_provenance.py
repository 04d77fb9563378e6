"""Which export a server runs, as the ensemble publishes it: the names of its provenance ``parameters``.

``python -m export`` writes them into the ``astro`` config beside the served spec (``export/provenance.py``
holds the record); ``client health`` prints them and ``make parity`` compares ``checkpoint_sha256`` with
the checkpoint it is given.
"""

from __future__ import annotations

PROVENANCE_PARAMETERS = (
    "checkpoint_sha256",  # SHA-256 of the checkpoint's config.json and model.safetensors
    "exported_at",  # UTC, ISO 8601: when this content was first exported
    "toolchain",  # "torch 2.13.0, onnx 1.19.1, onnxruntime 1.23.2" (or tensorrt + polygraphy)
    "target_container",  # the NGC image the repository is for, or the python target's server
)
