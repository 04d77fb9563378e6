"""Extract one served version's ``openAPIV3Schema`` from a published CustomResourceDefinition.

Usage (from the repository root, with the project's virtualenv)::

    .venv/bin/python deploy/schemas/vendor.py CRD.yaml VERSION SOURCE_URL OUT.json [CRD_NAME]

``CRD.yaml`` is the upstream file named in ``deploy/schemas/README.md`` (downloaded at the tag
given there); ``VERSION`` is the CRD version to take (``v1beta1``, ``v1alpha1``, ``v1``);
``SOURCE_URL`` is recorded in the output next to the schema; ``CRD_NAME`` picks one definition
from a file that holds several (Istio's ``crd-all.gen.yaml``:
``destinationrules.networking.istio.io``). The schema is kept as published
except that every ``description`` text is dropped (it does not take part in validation and is
most of the bytes). ``tests/test_deploy.py`` validates the rendered custom resources against
these files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strip_descriptions(node: Any) -> Any:
    """The schema without its ``description`` strings (a *property* named ``description`` is a
    dict, not a string, and stays)."""
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def extract(crd_text: str, version: str, source: str, name: str | None = None) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(crd_text) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if name is not None:
        crds = [d for d in crds if d["metadata"]["name"] == name]
    if len(crds) != 1:
        wanted = f" named {name!r}" if name is not None else ""
        raise SystemExit(f"expected one CustomResourceDefinition{wanted}, found {len(crds)}")
    crd = crds[0]
    spec = crd["spec"]
    served = {v["name"]: v for v in spec["versions"]}
    if version not in served:
        raise SystemExit(f"{crd['metadata']['name']} has no version {version!r}; it has {sorted(served)}")
    annotations = crd["metadata"].get("annotations", {})
    return {
        "source": source,
        "crd": crd["metadata"]["name"],
        "controller_gen": annotations.get("controller-gen.kubebuilder.io/version", ""),
        "apiVersion": f"{spec['group']}/{version}",
        "kind": spec["names"]["kind"],
        "scope": spec["scope"],
        "openAPIV3Schema": strip_descriptions(served[version]["schema"]["openAPIV3Schema"]),
    }


def main(argv: list[str]) -> None:
    if len(argv) not in (4, 5):
        raise SystemExit(__doc__)
    crd_path, version, source, out = argv[:4]
    data = extract(Path(crd_path).read_text(), version, source, argv[4] if len(argv) == 5 else None)
    Path(out).write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"wrote {out}: {data['kind']} {data['apiVersion']} from {source}")


if __name__ == "__main__":
    main(sys.argv[1:])
