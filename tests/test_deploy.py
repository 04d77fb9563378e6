"""The Kubernetes package in ``deploy/``, validated offline (docs/deploy.md).

Every overlay in ``deploy/overlays`` is rendered with ``kubectl kustomize`` and every object it yields
is validated:

* core kinds with ``kubernetes-validate`` in strict mode (unknown fields refused) for Kubernetes
  ``K8S_VERSION``; a kind it has no schema for is a failure, not a warning;
* custom resources (InferenceService, ServingRuntime, ScaledObject, PodMonitor, DestinationRule) against the
  ``openAPIV3Schema`` of their published CRDs vendored in ``deploy/schemas`` (README there: source,
  release), made strict the way the API server's strict field validation is; their ``metadata`` as a
  core ``ObjectMeta``; the ScaledObject also against the KEDA admission webhook's rules and the
  ``prometheus`` trigger's metadata keys; the DestinationRule's durations against Istio's CEL rules;
* what no schema sees: the pinned Triton image, flags, ports, probes and ``/dev/shm`` of the Triton
  container, the same in both variants; every ``$(VAR)`` resolvable; per-overlay resources; the
  ScaledObject targeting the Deployment that exists (or that KServe will create), its queries on the
  composing models in the overlay's namespace; the PodDisruptionBudget and PodMonitor selecting the
  Triton pods; the headless Service listing every ready replica's gRPC port (the client's replica set);
  the mesh's DestinationRule hashing the header the client sends its routing key in, on the ClusterIP
  Service's HTTP/2 port, ejecting a replica only when its connection fails.

Each validator returns a list of problems; the negative tests feed it broken objects and check it
names them. No cluster is involved: a few seconds in all.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from contract.routing import ROUTE_KEY_HEADER
from contract.tensors import ENSEMBLE, ITEM_SCORER, USER_ENCODER

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SCHEMAS = DEPLOY / "schemas"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
MESH_OVERLAYS = [o for o in OVERLAYS if o.endswith("-istio")]  # add components/istio-affinity
DEPLOYMENT_OVERLAYS = [o for o in OVERLAYS if o.startswith("deployment-")]
HEADLESS_SERVICE = "astro-triton-headless"  # the DNS name the client routes over (docs/deploy.md, section 6)
K8S_VERSION = "1.33"  # deploy/schemas/README.md says why

TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
REQUIRED_FLAGS = (
    "--model-control-mode=none",
    "--strict-readiness=true",
    "--cache-config=local,size=$(RESPONSE_CACHE_BYTES)",
    # GPU targets: the ensemble's keys/values in host memory, where the response cache can store them
    # (docs/deploy.md, "The response cache on GPU targets")
    "--cuda-memory-pool-byte-size=0:0",
    "--http-port=8000",
    "--grpc-port=8001",
    "--metrics-port=8002",
    "--allow-metrics=true",
)
READY, LIVE = "/v2/health/ready", "/v2/health/live"
KSERVE_CONTAINER = "kserve-container"  # the runtime container KServe merges the predictor's `model` into
KSERVE_PREDICTOR_SUFFIX = "-predictor"  # KServe v0.20 pkg/constants PredictorServiceName: <isvc>-predictor
QUEUE_METRIC, SUCCESS_METRIC = "nv_inference_queue_duration_us", "nv_inference_request_success"
TRITON_HEADROOM_BYTES = 2 * 2**30  # memory left for Triton itself once the cache and a full /dev/shm are counted

# The prometheus trigger's metadata keys KEDA v2.20.1 reads: pkg/scalers/prometheus_scaler.go
# (prometheusMetadata) and pkg/scalers/authentication/authentication_types.go (order=triggerMetadata).
PROMETHEUS_REQUIRED = frozenset({"serverAddress", "query", "threshold"})
PROMETHEUS_OPTIONAL = frozenset(
    {
        "queryParameters",
        "activationThreshold",
        "namespace",
        "customHeaders",
        "ignoreNullValues",
        "unsafeSsl",
        "awsRegion",
        "timeout",
        "identityOwner",
        "authModes",
        "authMode",
        "apiKey",
        "method",
        "keyParamName",
    }
)
ROOT_FIELDS = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
HPA_METRIC_TYPES = frozenset({"AverageValue", "Value", "Utilization"})
# Istio 1.30.3 pkg/config/kube/conversion.go (ConvertProtocol): the Service port protocols its sidecars
# route as HTTP/2, where a request header can be hashed (appProtocol first, else the port name's prefix).
MESH_HTTP2_APP_PROTOCOLS = frozenset({"kubernetes.io/h2c", "grpc", "http2"})
# The DestinationRule fields Istio 1.30.3's CRD checks with the CEL rule `duration(self) >= duration('1ms')`.
MESH_DURATIONS = (
    ("outlierDetection", "interval"),
    ("outlierDetection", "baseEjectionTime"),
    ("connectionPool", "tcp", "connectTimeout"),
    ("connectionPool", "tcp", "maxConnectionDuration"),
    ("connectionPool", "http", "idleTimeout"),
)
GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_LABEL_VALUE = 63

Doc = dict[str, Any]


# ------------------------------------------------------------------------------------------ rendering


class KustomizeError(RuntimeError):
    pass


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not on PATH: tests/test_deploy.py renders deploy/overlays/* with `kubectl kustomize` "
            "(tested with kubectl 1.32, kustomize v5.5). Install kubectl; the development and CI machines have it.",
            pytrace=False,
        )
    return path


def kustomize(directory: Path) -> list[Doc]:
    """``kubectl kustomize DIR``, parsed; raises KustomizeError with kubectl's message."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory} failed:\n{proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@functools.cache
def _rendered(overlay: str) -> tuple[Doc, ...]:
    return tuple(kustomize(DEPLOY / "overlays" / overlay))


def rendered(overlay: str) -> list[Doc]:
    """A private copy of the overlay's objects (rendered once per session)."""
    return copy.deepcopy(list(_rendered(overlay)))


def ident(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    hits = find(docs, kind, name)
    assert len(hits) == 1, f"expected one {kind}{' ' + name if name else ''}, found {[ident(d) for d in hits]}"
    return hits[0]


def is_kserve(docs: list[Doc]) -> bool:
    return bool(find(docs, "InferenceService"))


# ------------------------------------------------------------------------------------ schema validation


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object schema that lists ``properties``
    and neither sets ``additionalProperties`` nor preserves unknown fields: what the API server's strict
    field validation refuses."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":  # a map of names to schemas, not a schema itself
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("enum", "default", "required", "example"):  # data, not schemas
            out[key] = value
        else:
            out[key] = strict(value)
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class VendoredSchema:
    path: Path
    source: str
    api_version: str
    kind: str
    validator: jsonschema.Draft4Validator


@functools.cache
def vendored_schemas() -> dict[tuple[str, str], VendoredSchema]:
    """(apiVersion, kind) -> the vendored CRD schema, strict. OpenAPI v3.0 schemas are JSON Schema
    draft-4 style (boolean exclusiveMinimum, ``x-kubernetes-*`` extensions ignored)."""
    out: dict[tuple[str, str], VendoredSchema] = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        data = json.loads(path.read_text())
        key = (data["apiVersion"], data["kind"])
        assert key not in out, f"two vendored schemas for {key}: {out[key].path.name}, {path.name}"
        root = data["openAPIV3Schema"]
        # the API server takes apiVersion, kind and metadata on every object, listed by the CRD or not
        # (Istio's schemas list only spec and status)
        root["properties"] = {**ROOT_FIELDS, **root.get("properties", {})}
        out[key] = VendoredSchema(path, data["source"], key[0], key[1], jsonschema.Draft4Validator(strict(root)))
    return out


def _core_problems(doc: Doc) -> list[str]:
    try:
        validated = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{ident(doc)}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:  # the CLI's WARN: a failure here
        return [f"{ident(doc)}: no schema: {e.message}, nor a vendored CRD schema in deploy/schemas"]
    if validated != K8S_VERSION:
        return [f"{ident(doc)}: validated against Kubernetes {validated}, not {K8S_VERSION}"]
    return []


def _custom_problems(doc: Doc, schema: VendoredSchema) -> list[str]:
    problems = [
        f"{ident(doc)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message} ({schema.path.name})"
        for e in sorted(schema.validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    # metadata is `type: object` in a CRD: check it as the API server does, as an ObjectMeta
    meta_doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    problems += [p.replace("ConfigMap/", f"{doc.get('kind')}/", 1) for p in _core_problems(meta_doc)]
    return problems


def schema_problems(doc: Doc) -> list[str]:
    """Everything wrong with one object by its schema (empty: valid)."""
    for field in ("apiVersion", "kind", "metadata"):
        if field not in doc:
            return [f"{ident(doc)}: no {field}"]
    schema = vendored_schemas().get((doc["apiVersion"], doc["kind"]))
    return _custom_problems(doc, schema) if schema is not None else _core_problems(doc)


# ------------------------------------------------------------------------------------ KEDA's own rules


def keda_problems(so: Doc) -> list[str]:
    """What KEDA v2.20.1 refuses beyond the CRD schema: the CEL rule on replica bounds and the admission
    webhook's checks (apis/keda/v1alpha1/scaledobject_webhook.go, scaletriggers_types.go), and the
    prometheus trigger's metadata (pkg/scalers/prometheus_scaler.go)."""
    out: list[str] = []
    spec, name = so.get("spec", {}), so["metadata"]["name"]
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if lo > hi:
        out.append(f"ScaledObject/{name}: minReplicaCount {lo} > maxReplicaCount {hi}")
    if "idleReplicaCount" in spec and spec["idleReplicaCount"] >= lo:
        out.append(f"ScaledObject/{name}: idleReplicaCount must be below minReplicaCount {lo}")
    hpa = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("name") or f"keda-hpa-{name}"
    for what, value in (("name", name), ("HPA name", hpa)):
        if len(value) > MAX_LABEL_VALUE:
            out.append(f"ScaledObject/{name}: {what} {value!r} longer than {MAX_LABEL_VALUE} characters")
    names = [t["name"] for t in spec.get("triggers", []) if t.get("name")]
    out += [
        f"ScaledObject/{name}: trigger name {n!r} used twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    for i, trigger in enumerate(spec.get("triggers", [])):
        where = f"ScaledObject/{name}: triggers[{i}]"
        if trigger.get("metricType", "AverageValue") not in HPA_METRIC_TYPES:
            out.append(f"{where}: metricType {trigger['metricType']!r} is not one of {sorted(HPA_METRIC_TYPES)}")
        if trigger.get("type") != "prometheus":
            continue
        meta = trigger.get("metadata", {})
        out += [f"{where}: prometheus trigger needs metadata.{k}" for k in sorted(PROMETHEUS_REQUIRED - set(meta))]
        unknown = set(meta) - PROMETHEUS_REQUIRED - PROMETHEUS_OPTIONAL
        out += [f"{where}: unknown prometheus metadata key {k!r} (KEDA would ignore it)" for k in sorted(unknown)]
        for key in ("threshold", "activationThreshold"):
            if key in meta and _number(meta[key]) is None:
                out.append(f"{where}: metadata.{key} {meta[key]!r} is not a number")
        threshold = _number(meta.get("threshold", ""))
        if threshold is not None and threshold <= 0:
            out.append(f"{where}: metadata.threshold must be positive")
        for key in ("ignoreNullValues", "unsafeSsl"):
            if key in meta and meta[key].lower() not in ("true", "false"):
                out.append(f"{where}: metadata.{key} {meta[key]!r} is not true/false")
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the Triton workload


@dataclass
class Workload:
    """The Triton pods of one rendering, in the form either variant gives them."""

    container: Doc
    pod_labels: dict[str, str]
    pod_annotations: dict[str, str]
    volumes: list[Doc]
    resources: Doc
    scale_target: str  # the Deployment the autoscaler must scale
    model_repository: str  # the URI or path Triton reads (after $(VAR) substitution)


def workload(docs: list[Doc]) -> Workload:
    if is_kserve(docs):
        isvc, runtime = one(docs, "InferenceService"), one(docs, "ServingRuntime")
        predictor = isvc["spec"]["predictor"]
        (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == KSERVE_CONTAINER]
        labels = {
            **runtime["spec"].get("labels", {}),
            **isvc["metadata"].get("labels", {}),
            **predictor.get("labels", {}),
        }
        annotations = {**runtime["spec"].get("annotations", {}), **predictor.get("annotations", {})}
        return Workload(
            container=container,
            pod_labels=labels,
            pod_annotations=annotations,
            volumes=runtime["spec"].get("volumes", []),
            resources=predictor["model"].get("resources", container.get("resources", {})),
            scale_target=isvc["metadata"]["name"] + KSERVE_PREDICTOR_SUFFIX,
            model_repository=predictor["model"].get("storageUri", ""),
        )
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "tritonserver"]
    env = container_env(docs, container)
    repo_flag = next((a for a in container.get("args", []) if a.startswith("--model-repository=")), "=")
    return Workload(
        container=container,
        pod_labels=pod["metadata"].get("labels", {}),
        pod_annotations=pod["metadata"].get("annotations", {}),
        volumes=pod["spec"].get("volumes", []),
        resources=container.get("resources", {}),
        scale_target=deployment["metadata"]["name"],
        model_repository=substitute(repo_flag.split("=", 1)[1], env),
    )


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment from `env` values and the ConfigMaps of `envFrom` (which must exist
    in the rendering, under their hashed names; an optional Secret is skipped)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            hits = find(docs, "ConfigMap", ref["name"])
            if not hits and not ref.get("optional"):
                raise AssertionError(f"envFrom names ConfigMap {ref['name']!r}, which the rendering lacks")
            for cm in hits:
                env.update({k: str(v) for k, v in cm.get("data", {}).items()})
    env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return env


def substitute(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def quantity_bytes(q: str | int) -> int:
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, f"unsupported quantity {q!r}"
    return int(m.group(1)) * units[m.group(2) or ""]


def pinned_image() -> str:
    component = yaml.safe_load((DEPLOY / "components" / "triton-image" / "kustomization.yaml").read_text())
    (image,) = component["images"]
    return f"{image['name']}:{image['newTag']}"


def probe_port(container: Doc, port: int | str) -> int:
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    return by_name[port] if isinstance(port, str) else port


def triton_problems(docs: list[Doc], overlay: str) -> list[str]:
    """The Triton container: image, flags, ports, probes, /dev/shm, environment and resources."""
    out: list[str] = []
    w = workload(docs)
    c = w.container
    if c.get("image") != pinned_image():
        out.append(f"image {c.get('image')!r} is not the pinned {pinned_image()!r}")
    args = c.get("args", [])
    out += [f"flag {flag} missing from {args}" for flag in REQUIRED_FLAGS if flag not in args]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports != TRITON_PORTS:
        out.append(f"container ports {ports} are not {TRITON_PORTS}")
    for probe, path in (("startupProbe", READY), ("readinessProbe", READY), ("livenessProbe", LIVE)):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or probe_port(c, get.get("port", 0)) != TRITON_PORTS["http"]:
            out.append(f"{probe} is not GET {path} on port {TRITON_PORTS['http']}: {c.get(probe)}")
    shm = [v for v in w.volumes if v.get("emptyDir", {}).get("medium") == "Memory"]
    mounted = {m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"}
    if not shm or {v["name"] for v in shm} & mounted != mounted or not mounted:
        out.append("/dev/shm is not a memory emptyDir mounted into the container")
    env = container_env(docs, c)
    unresolved = sorted({v for a in args for v in re.findall(r"\$\(([^)]+)\)", a)} - set(env))
    out += [f"$({v}) in the args is defined by no env or ConfigMap" for v in unresolved]
    cache = int(env.get("RESPONSE_CACHE_BYTES", "0"))
    if cache <= 0:
        out.append(f"RESPONSE_CACHE_BYTES {env.get('RESPONSE_CACHE_BYTES')!r} is not a positive byte count")
    limits, requests = w.resources.get("limits", {}), w.resources.get("requests", {})
    gpu = "gpu" in overlay
    if gpu and (str(limits.get("nvidia.com/gpu")) != "1" or str(requests.get("nvidia.com/gpu")) != "1"):
        out.append(f"a GPU overlay must request and limit nvidia.com/gpu: 1, has {w.resources}")
    if not gpu and "nvidia.com/gpu" in {**limits, **requests}:
        out.append("a CPU overlay requests a GPU")
    if env.get("ALLOW_GPU_METRICS") != ("true" if gpu else "false"):
        out.append(f"ALLOW_GPU_METRICS is {env.get('ALLOW_GPU_METRICS')!r} on a {'GPU' if gpu else 'CPU'} overlay")
    if "memory" not in limits or "cpu" not in requests:
        out.append(f"no memory limit or cpu request: {w.resources}")
    else:
        shm_bytes = sum(quantity_bytes(v["emptyDir"].get("sizeLimit", "0")) for v in shm)
        spare = quantity_bytes(limits["memory"]) - cache - shm_bytes
        if spare < TRITON_HEADROOM_BYTES:
            out.append(f"memory limit {limits['memory']} leaves {spare} B beside the cache and /dev/shm")
    target = "tensorrt" if gpu else "onnxruntime"
    if target not in w.model_repository and not w.model_repository.startswith("/models/"):
        out.append(f"model repository {w.model_repository!r} is not a {target} repository nor the PVC mount")
    return out


def autoscaling_problems(docs: list[Doc]) -> list[str]:
    """The ScaledObject scales the Triton Deployment on the composing models' queue time, in this namespace."""
    out: list[str] = []
    so = one(docs, "ScaledObject")
    ref, ns = so["spec"]["scaleTargetRef"], so["metadata"].get("namespace")
    w = workload(docs)
    if (ref.get("kind", "Deployment"), ref["name"]) != ("Deployment", w.scale_target):
        out.append(f"scaleTargetRef {ref} is not the Deployment {w.scale_target!r}")
    if is_kserve(docs):
        annotations = one(docs, "InferenceService")["metadata"].get("annotations", {})
        # Standard: a plain Deployment named <isvc>-predictor; external: KServe makes no HPA of its own
        if annotations.get("serving.kserve.io/deploymentMode") != "Standard":
            out.append("the InferenceService is not in KServe's Standard (raw Deployment) mode")
        if annotations.get("serving.kserve.io/autoscalerClass") != "external":
            out.append("the InferenceService's autoscalerClass is not `external`: KServe would add its own HPA")
    elif not find(docs, "Deployment", ref["name"]):
        out.append(f"scaleTargetRef names Deployment {ref['name']!r}, which the rendering lacks")
    models = set()
    for trigger in so["spec"]["triggers"]:
        where = f"trigger {trigger.get('name')}"
        query = trigger.get("metadata", {}).get("query", "")
        if trigger.get("metricType") != "Value":
            out.append(f"{where}: metricType must be Value (an average queue time is not divided among pods)")
        selectors = re.findall(r"(nv_inference_\w+)\{([^}]*)\}", query)
        if sorted(m for m, _ in selectors) != sorted([QUEUE_METRIC, SUCCESS_METRIC]):
            out.append(f"{where}: query is not {QUEUE_METRIC} over {SUCCESS_METRIC}: {query!r}")
            continue
        labels = [dict(re.findall(r'(\w+)="([^"]*)"', sel)) for _, sel in selectors]
        if labels[0] != labels[1]:
            out.append(f"{where}: numerator and denominator select different series: {labels}")
        if labels[0].get("namespace") != ns:
            out.append(f"{where}: query reads namespace {labels[0].get('namespace')!r}, the overlay deploys to {ns!r}")
        models.add(labels[0].get("model"))
    if models != {ITEM_SCORER, USER_ENCODER}:
        out.append(f"triggers read models {sorted(map(str, models))}, not the composing models")
    if ENSEMBLE in models:
        out.append(f"a trigger reads the ensemble {ENSEMBLE!r}, which reports (almost) no queue time")
    return out + keda_problems(so)


def selection_problems(docs: list[Doc]) -> list[str]:
    """The PodDisruptionBudget and the PodMonitor select the Triton pods; metrics on port 8002."""
    out: list[str] = []
    w = workload(docs)
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        selector = one(docs, kind)["spec"]["selector"]["matchLabels"]
        if not selector.items() <= w.pod_labels.items():
            out.append(f"{kind} selects {selector}, the Triton pods carry {w.pod_labels}")
    ports = {p["name"]: p["containerPort"] for p in w.container.get("ports", [])}
    for endpoint in one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]:
        if ports.get(endpoint.get("port")) != TRITON_PORTS["metrics"]:
            out.append(
                f"PodMonitor scrapes port {endpoint.get('port')!r}, not the metrics port {TRITON_PORTS['metrics']}"
            )
    if w.pod_annotations.get("prometheus.io/port") != str(TRITON_PORTS["metrics"]):
        out.append(f"pod annotation prometheus.io/port is {w.pod_annotations.get('prometheus.io/port')!r}")
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    floor = one(docs, "ScaledObject")["spec"].get("minReplicaCount", 1)
    if pdb.get("maxUnavailable", 0) >= floor or pdb.get("minAvailable", 0) >= floor:
        out.append(f"PodDisruptionBudget {pdb} would block every eviction at {floor} replicas")
    return out


def headless_problems(docs: list[Doc]) -> list[str]:
    """The direct path's replica set: the headless Service resolves to every ready Triton pod's gRPC port
    and to nothing else (a pod still loading its models must not receive calls)."""
    out: list[str] = []
    svc = one(docs, "Service", HEADLESS_SERVICE)["spec"]
    if svc.get("clusterIP") != "None":
        out.append(f"{HEADLESS_SERVICE}: clusterIP {svc.get('clusterIP')!r}, not None: DNS would give one virtual IP")
    if svc.get("publishNotReadyAddresses", False):
        out.append(f"{HEADLESS_SERVICE}: publishNotReadyAddresses: DNS would list pods that are not ready")
    w = workload(docs)
    if not svc.get("selector") or not svc["selector"].items() <= w.pod_labels.items():
        out.append(f"{HEADLESS_SERVICE} selects {svc.get('selector')}, the Triton pods carry {w.pod_labels}")
    grpc = [p for p in svc.get("ports", []) if p.get("port") == TRITON_PORTS["grpc"]]
    if not grpc or probe_port(w.container, grpc[0].get("targetPort", 0)) != TRITON_PORTS["grpc"]:
        out.append(f"{HEADLESS_SERVICE} does not expose the gRPC port {TRITON_PORTS['grpc']}: {svc.get('ports')}")
    return out


def go_duration_seconds(text: str) -> float | None:
    """A Go duration (``10s``, ``1m30s``, ``250ms``) in seconds, as Istio's CEL ``duration()`` reads it;
    None when the text is not one."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * GO_DURATION_UNITS[u] for n, u in parts)


def mesh_problems(docs: list[Doc]) -> list[str]:
    """The DestinationRule: a consistent hash of the header the client sends its routing key in, on the
    ClusterIP Service whose gRPC port Istio routes as HTTP/2; ejection for failed connections only; its
    durations valid for Istio's CEL rules."""
    out: list[str] = []
    dr = one(docs, "DestinationRule")
    spec, namespace = dr["spec"], dr["metadata"].get("namespace")
    policy = spec.get("trafficPolicy", {})
    services = {d["metadata"]["name"]: d for d in find(docs, "Service")}
    host = spec.get("host", "")
    name = host.split(".")[0]
    if name not in services or (host != name and not host.startswith(f"{name}.{namespace}.")):
        out.append(f"host {host!r} is no Service of this rendering in {namespace!r}: {sorted(services)}")
    elif services[name]["spec"].get("clusterIP") == "None":
        out.append(f"DestinationRule host {host!r} is headless: a sidecar passes its connections through, unhashed")
    else:
        ports = [p for p in services[name]["spec"]["ports"] if p["port"] == TRITON_PORTS["grpc"]]
        protocol = ports[0].get("appProtocol", ports[0].get("name", "").split("-")[0]) if ports else None
        if protocol not in MESH_HTTP2_APP_PROTOCOLS:
            out.append(f"Service {name} port {TRITON_PORTS['grpc']} is not HTTP/2 to Istio: {protocol!r}")
    header = policy.get("loadBalancer", {}).get("consistentHash", {}).get("httpHeaderName")
    if header != ROUTE_KEY_HEADER:
        out.append(f"httpHeaderName {header!r} is not the client's routing-key header, {ROUTE_KEY_HEADER}")
    outlier = policy.get("outlierDetection", {})
    # Istio 1.30.3 pilot/pkg/networking/core/cluster_traffic_policy.go (applyOutlierDetection): an unset
    # consecutive5xxErrors leaves Envoy's default, eject after 5 consecutive 5xx
    if outlier.get("consecutive5xxErrors") != 0 or outlier.get("consecutiveGatewayErrors", 0) != 0:
        out.append(
            f"outlierDetection ejects on answered errors ({outlier}): a replica refusing work when its queues "
            "are full would be ejected and its users moved onto the next replicas"
        )
    if not (outlier.get("splitExternalLocalOriginErrors") and outlier.get("consecutiveLocalOriginFailures")):
        out.append(f"outlierDetection does not eject a replica whose connections fail: {outlier}")
    for path in MESH_DURATIONS:
        value: Any = policy
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        seconds = go_duration_seconds(value) if isinstance(value, str) else None
        if value is not None and (seconds is None or seconds < 1e-3):
            out.append(f"trafficPolicy.{'.'.join(path)} {value!r}: must be a valid duration greater than 1ms")
    return out


# ------------------------------------------------------------------------------------------ the tests


def test_overlays_exist() -> None:
    expected = {
        "deployment-cpu-onnxruntime",
        "deployment-gpu-tensorrt",
        "kserve-cpu-onnxruntime",
        "kserve-gpu-tensorrt",
        "deployment-cpu-onnxruntime-istio",
    }
    assert expected <= set(OVERLAYS), OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(overlay: str) -> None:
    kinds = sorted(d["kind"] for d in rendered(overlay))
    common = ["ConfigMap", "PodDisruptionBudget", "PodMonitor", "ScaledObject", "ServiceAccount"]
    if overlay.startswith("kserve-"):
        assert kinds == sorted([*common, "InferenceService", "ServingRuntime"])
    else:
        extra = ["PersistentVolumeClaim"] if overlay.endswith("-pvc") else []
        extra += ["DestinationRule"] if overlay in MESH_OVERLAYS else []
        assert kinds == sorted([*common, *extra, "Deployment", "Service", "Service"])
    assert {d["metadata"].get("namespace") for d in rendered(overlay)} == {"astro"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_its_schema(overlay: str) -> None:
    """Core kinds: kubernetes-validate --strict for K8S_VERSION; custom resources: vendored CRD schemas."""
    problems = [p for doc in rendered(overlay) for p in schema_problems(doc)]
    assert problems == [], "\n".join(problems)
    custom = {(d["apiVersion"], d["kind"]) for d in rendered(overlay)} & set(vendored_schemas())
    assert len(custom) >= 2, f"no custom resource was checked against a vendored schema: {custom}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_container(overlay: str) -> None:
    problems = triton_problems(rendered(overlay), overlay)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_on_composing_models_queue_time(overlay: str) -> None:
    problems = autoscaling_problems(rendered(overlay))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budget_and_scraping_select_the_triton_pods(overlay: str) -> None:
    problems = selection_problems(rendered(overlay))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("overlay", DEPLOYMENT_OVERLAYS)
def test_headless_service_lists_every_ready_replica(overlay: str) -> None:
    problems = headless_problems(rendered(overlay))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda svc: svc.pop("clusterIP"), "not None"),
        (lambda svc: svc.__setitem__("publishNotReadyAddresses", True), "not ready"),
        (lambda svc: svc["selector"].__setitem__("app.kubernetes.io/name", "other"), "selects"),
        (lambda svc: svc["ports"][0].__setitem__("targetPort", "http"), "gRPC port"),
    ],
    ids=["cluster-ip", "not-ready-pods", "other-pods", "http-port"],
)
def test_headless_checks_refuse(mutate: Callable[[Doc], object], expected: str) -> None:
    docs = rendered("deployment-cpu-onnxruntime")
    assert headless_problems(docs) == []
    mutate(one(docs, "Service", HEADLESS_SERVICE)["spec"])
    problems = headless_problems(docs)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("overlay", MESH_OVERLAYS)
def test_mesh_hashes_the_clients_routing_key(overlay: str) -> None:
    """Behind Istio, the caller's sidecar picks the replica by the header the client sends its routing key
    in (contract/routing.py), so a user's calls reach the replica that holds its keys/values."""
    problems = mesh_problems(rendered(overlay))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("target", ["cpu-onnxruntime", "gpu-tensorrt"])
def test_both_variants_run_triton_the_same_way(target: str) -> None:
    """The plain Deployment and KServe's ServingRuntime carry the same image, flags (but for where the
    repository is: KServe downloads it to /mnt/models first), ports, probes, resources and cache size."""
    plain, kserve = rendered(f"deployment-{target}"), rendered(f"kserve-{target}")
    a, b = workload(plain), workload(kserve)

    def flags(w: Workload) -> list[str]:
        return [x for x in w.container["args"] if not x.startswith("--model-repository=")]

    def probes(w: Workload) -> dict[str, Any]:
        out = {}
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = copy.deepcopy(w.container[name])
            p["httpGet"]["port"] = probe_port(w.container, p["httpGet"]["port"])
            out[name] = p
        return out

    assert a.container["image"] == b.container["image"]
    assert flags(a) == flags(b)
    assert a.container["ports"] == b.container["ports"]
    assert probes(a) == probes(b)
    assert a.resources == b.resources
    env_a, env_b = container_env(plain, a.container), container_env(kserve, b.container)
    assert env_a["RESPONSE_CACHE_BYTES"] == env_b["RESPONSE_CACHE_BYTES"]
    assert a.model_repository.split("/")[-2:] == b.model_repository.split("/")[-2:]  # same exported tree


def test_triton_image_is_pinned_in_one_place() -> None:
    """Only components/triton-image sets the tag; every manifest names the image untagged."""
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", pinned_image())
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for line in path.read_text().splitlines():
            value = line.split("#", 1)[0]
            assert not re.search(r"image:\s*\S*tritonserver:", value), f"{path}: a second tag pin: {line.strip()}"


def test_vendored_schemas_name_their_source() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    schemas = vendored_schemas()
    kinds = {"InferenceService", "ServingRuntime", "ScaledObject", "PodMonitor", "DestinationRule"}
    assert {k for _, k in schemas} == kinds
    for s in schemas.values():
        release = re.fullmatch(r"[a-z-]+-(v?\d+\.\d+\.\d+)-[a-z]+-v\w+\.json", s.path.name)
        assert release, s.path.name
        assert re.match(rf"https://github\.com/[\w-]+/[\w-]+/blob/{re.escape(release.group(1))}/", s.source), s.source
        assert s.path.name in readme and s.source in readme, f"deploy/schemas/README.md does not list {s.path.name}"


# ------------------------------------------------------------------------- the validators can fail


def _first(overlay: str, kind: str) -> Doc:
    return find(rendered(overlay), kind)[0]


def _container(deployment: Doc) -> Doc:
    container: Doc = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _container(d).__setitem__("readinessprobe", _container(d).pop("readinessProbe")), "readinessprobe"),
        (lambda d: d["spec"].__setitem__("replica", 2), "'replica' was unexpected"),
        (lambda d: _container(d)["ports"][0].__setitem__("containerPort", "8000"), "is not of type 'integer'"),
        (lambda d: _container(d)["livenessProbe"]["httpGet"].__setitem__("paht", "/"), "'paht' was unexpected"),
    ],
    ids=["misspelled-probe", "unknown-spec-field", "port-as-string", "misspelled-path"],
)
def test_strict_core_validation_refuses(mutate: Callable[[Doc], None], expected: str) -> None:
    deployment = _first("deployment-cpu-onnxruntime", "Deployment")
    assert schema_problems(deployment) == []
    mutate(deployment)
    problems = schema_problems(deployment)
    assert any(expected in p for p in problems), problems


def test_a_kind_without_schema_is_a_failure() -> None:
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    problems = schema_problems(widget)
    assert problems and "no schema" in problems[0], problems


@pytest.mark.parametrize(
    ("overlay", "kind", "mutate", "expected"),
    [
        ("kserve-cpu-onnxruntime", "ScaledObject", lambda d: d["spec"].__setitem__("maxReplicas", 5), "maxReplicas"),
        ("kserve-cpu-onnxruntime", "ScaledObject", lambda d: d["spec"].__setitem__("minReplicaCount", "two"), "'two'"),
        (
            "kserve-cpu-onnxruntime",
            "InferenceService",
            lambda d: d["spec"]["predictor"]["model"].__setitem__("storageURI", "s3://x"),
            "storageURI",
        ),
        (
            "kserve-cpu-onnxruntime",
            "InferenceService",
            lambda d: d["spec"]["predictor"]["model"]["modelFormat"].pop("name"),
            "'name' is a required property",
        ),
        (
            "kserve-gpu-tensorrt",
            "ServingRuntime",
            lambda d: d["spec"]["containers"][0]["readinessProbe"].__setitem__("httpGett", {}),
            "httpGett",
        ),
        (
            "deployment-gpu-tensorrt",
            "PodMonitor",
            lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("portt", "metrics"),
            "portt",
        ),
        ("deployment-gpu-tensorrt", "PodMonitor", lambda d: d["metadata"]["labels"].__setitem__("n", 1), "labels.n"),
        (
            "deployment-cpu-onnxruntime-istio",
            "DestinationRule",
            lambda d: d["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"].__setitem__("httpHeadername", "x"),
            "httpHeadername",
        ),
        (
            "deployment-cpu-onnxruntime-istio",
            "DestinationRule",
            lambda d: d["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"].__setitem__("useSourceIp", True),
            "is valid under each of",
        ),
    ],
    ids=[
        "scaledobject-unknown-field",
        "scaledobject-wrong-type",
        "isvc-misspelled-storageUri",
        "isvc-modelformat-without-name",
        "runtime-misspelled-probe-field",
        "podmonitor-unknown-field",
        "metadata-label-not-a-string",
        "destinationrule-misspelled-field",
        "destinationrule-two-hash-keys",
    ],
)
def test_vendored_crd_schemas_refuse(overlay: str, kind: str, mutate: Callable[[Doc], None], expected: str) -> None:
    doc = _first(overlay, kind)
    assert schema_problems(doc) == []
    mutate(doc)
    problems = schema_problems(doc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s["spec"].update(minReplicaCount=30, maxReplicaCount=20), "minReplicaCount 30 > maxReplicaCount 20"),
        (lambda s: s["metadata"].__setitem__("name", "a" * 60), "HPA name 'keda-hpa-aaa"),
        (lambda s: s["spec"]["triggers"][1].__setitem__("name", s["spec"]["triggers"][0]["name"]), "used twice"),
        (lambda s: s["spec"]["triggers"][0]["metadata"].pop("threshold"), "needs metadata.threshold"),
        (
            lambda s: s["spec"]["triggers"][0]["metadata"].__setitem__("ignoreNullValue", "true"),
            "unknown prometheus metadata key 'ignoreNullValue'",
        ),
        (lambda s: s["spec"]["triggers"][0]["metadata"].__setitem__("threshold", "2ms"), "is not a number"),
        (lambda s: s["spec"]["triggers"][0]["metadata"].__setitem__("threshold", "0"), "must be positive"),
        (lambda s: s["spec"]["triggers"][0].__setitem__("metricType", "Average"), "metricType 'Average'"),
    ],
    ids=[
        "min-above-max",
        "hpa-name-too-long",
        "duplicate-trigger",
        "no-threshold",
        "typo-key",
        "threshold-unit",
        "threshold-zero",
        "bad-metric-type",
    ],
)
def test_keda_rules_refuse(mutate: Callable[[Doc], None], expected: str) -> None:
    so = _first("deployment-cpu-onnxruntime", "ScaledObject")
    assert keda_problems(so) == []
    mutate(so)
    problems = keda_problems(so)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda docs: one(docs, "ScaledObject")["metadata"].__setitem__("namespace", "prod"), "namespace 'astro'"),
        (
            lambda docs: one(docs, "ScaledObject")["spec"]["scaleTargetRef"].__setitem__("name", "astro-predictor"),
            "scaleTargetRef",
        ),
        (
            lambda docs: one(docs, "ScaledObject")["spec"]["triggers"].pop(),
            "not the composing models",
        ),
        (
            lambda docs: [
                t["metadata"].__setitem__("query", t["metadata"]["query"].replace(ITEM_SCORER, ENSEMBLE))
                for t in one(docs, "ScaledObject")["spec"]["triggers"]
            ],
            "reads the ensemble",
        ),
        (
            lambda docs: one(docs, "ScaledObject")["spec"]["triggers"][0].__setitem__("metricType", "AverageValue"),
            "metricType must be Value",
        ),
    ],
    ids=["query-namespace", "wrong-target", "one-model-only", "ensemble-queue", "average-value"],
)
def test_autoscaling_checks_refuse(mutate: Callable[[list[Doc]], object], expected: str) -> None:
    docs = rendered("deployment-cpu-onnxruntime")
    mutate(docs)
    problems = autoscaling_problems(docs)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("overlay", "mutate", "expected"),
    [
        (
            "deployment-cpu-onnxruntime",
            lambda docs: _container(one(docs, "Deployment"))["args"].remove("--model-control-mode=none"),
            "--model-control-mode=none",
        ),
        (
            "deployment-cpu-onnxruntime",
            lambda docs: _container(one(docs, "Deployment"))["livenessProbe"]["httpGet"].__setitem__("path", READY),
            "livenessProbe",
        ),
        (
            "kserve-gpu-tensorrt",
            lambda docs: one(docs, "InferenceService")["spec"]["predictor"]["model"]["resources"]["limits"].pop(
                "nvidia.com/gpu"
            ),
            "nvidia.com/gpu: 1",
        ),
        (
            "deployment-cpu-onnxruntime",
            lambda docs: one(docs, "ConfigMap")["data"].pop("RESPONSE_CACHE_BYTES"),
            "$(RESPONSE_CACHE_BYTES)",
        ),
        (
            "deployment-gpu-tensorrt",
            lambda docs: one(docs, "ConfigMap")["data"].__setitem__("RESPONSE_CACHE_BYTES", str(15 * 2**30)),
            "beside the cache",
        ),
        (
            "kserve-cpu-onnxruntime",
            lambda docs: one(docs, "ServingRuntime")["spec"]["volumes"][0]["emptyDir"].pop("medium"),
            "/dev/shm",
        ),
        (
            "kserve-gpu-tensorrt",
            lambda docs: one(docs, "ServingRuntime")["spec"]["containers"][0]["args"].remove(
                "--cuda-memory-pool-byte-size=0:0"
            ),
            "--cuda-memory-pool-byte-size=0:0",
        ),
    ],
    ids=[
        "flag-missing",
        "liveness-on-ready",
        "gpu-missing",
        "unresolved-var",
        "cache-too-big",
        "shm-on-disk",
        "gpu-keys-values-in-the-cuda-pool",
    ],
)
def test_triton_checks_refuse(overlay: str, mutate: Callable[[list[Doc]], object], expected: str) -> None:
    docs = rendered(overlay)
    mutate(docs)
    problems = triton_problems(docs, overlay)
    assert any(expected in p for p in problems), problems


def _rule(docs: list[Doc]) -> Doc:
    rule: Doc = one(docs, "DestinationRule")["spec"]
    return rule


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda docs: _rule(docs)["trafficPolicy"]["loadBalancer"]["consistentHash"].__setitem__(
                "httpHeaderName", "x-user-id"
            ),
            "is not the client's routing-key header",
        ),
        (
            lambda docs: _rule(docs)["trafficPolicy"].__setitem__("loadBalancer", {"simple": "ROUND_ROBIN"}),
            "is not the client's routing-key header",
        ),
        (lambda docs: _rule(docs).__setitem__("host", "astro-triton-headless"), "is headless"),
        (lambda docs: _rule(docs).__setitem__("host", "astro-triton.prod.svc.cluster.local"), "no Service"),
        (lambda docs: _rule(docs).__setitem__("host", "astro"), "no Service"),
        (
            lambda docs: one(docs, "Service", "astro-triton")["spec"]["ports"][1].__setitem__(
                "appProtocol", "kubernetes.io/ws"
            ),
            "is not HTTP/2 to Istio",
        ),
        (lambda docs: _rule(docs)["trafficPolicy"]["outlierDetection"].pop("consecutive5xxErrors"), "ejects on"),
        (
            lambda docs: _rule(docs)["trafficPolicy"]["outlierDetection"].__setitem__("consecutiveGatewayErrors", 3),
            "ejects on",
        ),
        (
            lambda docs: _rule(docs)["trafficPolicy"]["outlierDetection"].pop("splitExternalLocalOriginErrors"),
            "whose connections fail",
        ),
        (
            lambda docs: _rule(docs)["trafficPolicy"]["outlierDetection"].__setitem__("interval", "10"),
            "valid duration greater than 1ms",
        ),
        (
            lambda docs: _rule(docs)["trafficPolicy"]["outlierDetection"].__setitem__("baseEjectionTime", "500us"),
            "valid duration greater than 1ms",
        ),
    ],
    ids=[
        "other-header",
        "round-robin",
        "headless-host",
        "other-namespace",
        "unknown-host",
        "port-not-http2",
        "eject-on-5xx-by-default",
        "eject-on-gateway-errors",
        "no-local-origin-split",
        "duration-without-unit",
        "duration-below-1ms",
    ],
)
def test_mesh_checks_refuse(mutate: Callable[[list[Doc]], object], expected: str) -> None:
    docs = rendered("deployment-cpu-onnxruntime-istio")
    assert mesh_problems(docs) == []
    mutate(docs)
    problems = mesh_problems(docs)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0), ("10", None), ("s", None)]
)
def test_go_durations(text: str, seconds: float | None) -> None:
    assert go_duration_seconds(text) == seconds


def test_selection_checks_refuse() -> None:
    docs = rendered("kserve-cpu-onnxruntime")
    one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "other"
    one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] = "http"
    problems = selection_problems(docs)
    assert any("PodDisruptionBudget selects" in p for p in problems), problems
    assert any("PodMonitor scrapes port 'http'" in p for p in problems), problems


def test_a_broken_kustomization_fails_to_render(tmp_path: Path) -> None:
    base = os.path.relpath(DEPLOY / "base" / "deployment", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}, missing.yaml]\n")
    with pytest.raises(KustomizeError, match=r"missing\.yaml"):
        kustomize(tmp_path)


# ------------------------------------------------------------------------------------------ tracing

COLLECTOR_VAR = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # the one place the collector is named: components/tracing
TRACE_FLAGS = (  # what Triton needs to export OpenTelemetry traces (Triton's docs/user_guide/trace.md)
    "--trace-config=mode=opentelemetry",
    "--trace-config=level=TIMESTAMPS",
    f"--trace-config=opentelemetry,url=$({COLLECTOR_VAR})",
)


def tracing_problems(docs: list[Doc]) -> list[str]:
    """Triton exports OpenTelemetry traces over OTLP/HTTP to the collector the ConfigMap names, at a
    sampling rate the ConfigMap sets."""
    out: list[str] = []
    container = workload(docs).container
    args = container.get("args", [])
    out += [f"tracing flag {flag} missing from {args}" for flag in TRACE_FLAGS if flag not in args]
    env = container_env(docs, container)
    rates = [substitute(a, env).split("=", 2)[2] for a in args if a.startswith("--trace-config=rate=")]
    if len(rates) != 1 or not rates[0].isdigit():
        out.append(f"not one --trace-config=rate=N with N a whole number: {rates}")
    url = env.get(COLLECTOR_VAR, "")
    if not re.fullmatch(r"https?://[^/\s]+/v1/traces", url):
        out.append(f"{COLLECTOR_VAR} {url!r} is not an OTLP/HTTP traces endpoint (http(s)://host:port/v1/traces)")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_exports_traces_to_the_collector(overlay: str) -> None:
    problems = tracing_problems(rendered(overlay))
    assert problems == [], "\n".join(problems)


def test_the_collector_is_named_in_one_place() -> None:
    """Only components/tracing sets the collector's address; every overlay gets it from there."""
    places = [
        str(path.relative_to(DEPLOY))
        for path in sorted(DEPLOY.rglob("*.yaml"))
        if re.search(rf"^\s*-\s*{COLLECTOR_VAR}=", path.read_text(), re.MULTILINE)
    ]
    assert places == ["components/tracing/kustomization.yaml"], places
    urls = set()
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        urls.add(container_env(docs, workload(docs).container)[COLLECTOR_VAR])
    assert len(urls) == 1, urls


@pytest.mark.parametrize(
    ("overlay", "mutate", "expected"),
    [
        (
            "deployment-cpu-onnxruntime",
            lambda docs: one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"].remove(
                "--trace-config=mode=opentelemetry"
            ),
            "tracing flag --trace-config=mode=opentelemetry missing",
        ),
        (
            "kserve-cpu-onnxruntime",
            lambda docs: one(docs, "ServingRuntime")["spec"]["containers"][0]["args"].remove(TRACE_FLAGS[2]),
            "tracing flag --trace-config=opentelemetry,url=",
        ),
        (
            "deployment-gpu-tensorrt",
            lambda docs: one(docs, "ConfigMap")["data"].__setitem__(COLLECTOR_VAR, "otel-collector:4317"),
            "is not an OTLP/HTTP traces endpoint",
        ),
        (
            "kserve-gpu-tensorrt",
            lambda docs: one(docs, "ConfigMap")["data"].__setitem__("TRACE_RATE", "often"),
            "not one --trace-config=rate=N",
        ),
    ],
    ids=["no-mode", "no-url", "grpc-collector", "bad-rate"],
)
def test_tracing_checks_refuse(overlay: str, mutate: Callable[[list[Doc]], object], expected: str) -> None:
    docs = rendered(overlay)
    assert tracing_problems(docs) == []
    mutate(docs)
    problems = tracing_problems(docs)
    assert any(expected in p for p in problems), problems
