"""What export the server runs, as its ensemble publishes it: checkpoint hash, export time, toolchain, container.

``python -m export`` writes these into the ensemble's ``parameters`` (``contract/provenance.py``);
``client health`` prints them beside the served spec, so an operator sees which weights answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from contract.provenance import PROVENANCE_PARAMETERS


def served_provenance(
    url: str,
    model: str,
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    ssl: bool = False,
    root_certificates: Path | None = None,
    private_key: Path | None = None,
    certificate_chain: Path | None = None,
) -> dict[str, str]:
    """The provenance parameters of ``model``'s config at ``url``; empty where it publishes none (an export
    older than them) or the config cannot be read (``health`` reports why the model is not ready)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def path(p: Path | None) -> str | None:
        return str(p) if p is not None else None

    triton = grpcclient.InferenceServerClient(
        url,
        ssl=ssl,
        root_certificates=path(root_certificates),
        private_key=path(private_key),
        certificate_chain=path(certificate_chain),
    )
    try:
        config = triton.get_model_config(model, as_json=True, headers=dict(headers or {}), client_timeout=timeout_s)
    except InferenceServerException:
        return {}
    finally:
        triton.close()
    params = config.get("config", {}).get("parameters", {})
    return {k: str(params[k].get("string_value", "")) for k in PROVENANCE_PARAMETERS if k in params}
