"""Triton model repository generator: one code path for the ``tensorrt``, ``onnxruntime``
and ``python`` targets.

Every ``config.pbtxt`` is built as a ``ModelConfig`` protobuf from the :class:`AstroConfig`
and printed with ``text_format``; ``max_batch_size``, dims, limits and warmup shapes come
from the tensor declarations in ``contract/tensors.py``, so they agree by construction and
nothing is hand-edited. The ensemble ``astro`` is identical across targets and publishes
the serving limits, vocabularies and block spec as ``parameters``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contract.admission import QueueBound, queue_bound
from contract.config import AstroConfig
from contract.serving_spec import ServingSpec
from contract.tensors import (
    CACHE_DTYPES,
    CANDIDATES,
    ENSEMBLE,
    GRAPHS,
    ITEM_SCORER,
    USER_ENCODER,
    CacheDType,
    Tensor,
    graph_io,
    max_sizes,
)
from export.tensorrt_metadata import metadata_path

Target = Literal["tensorrt", "onnxruntime", "python"]
TARGETS: tuple[Target, ...] = ("tensorrt", "onnxruntime", "python")
PYTHON_MODEL_SOURCE = Path(__file__).resolve().parent.parent / "serve" / "onnx_python_model.py"
QUEUE_DELAY_US = 200  # dynamic batching window: small against a "tens of milliseconds" budget
WARMUP_CANDIDATES = 64  # warmup request size: a typical ranking request, not the worst case
# Composing models whose responses Triton may cache: the user encoder, whose output depends on the user's
# history and the request scenario only. Never item_scorer: its candidates are new on every request.
CACHED_GRAPHS = (USER_ENCODER,)
# python target: instances per composing model, each a single ONNX Runtime session on a CPU core. The
# scorer is the slower stage of the pipeline (N=256: ~10 ms against the encoder's 2-3 ms on 2 cores), and
# a response-cache hit frees the encoder's core: a second scorer instance takes it (session traffic 1.17x
# -> 1.68x over cache off, docs/bench/report.md, "Goals").
PYTHON_INSTANCES = {USER_ENCODER: 1, ITEM_SCORER: 2}
# python target: the encoder's dynamic batcher prefers batches of one request. Its single instance otherwise
# merges requests that arrive together into one execution (on one core, as slow as running them in turn), and
# they leave it together, reach item_scorer together and are merged again onto one of its two instances while
# the other idles: at concurrency 2 the pair moved in lock-step through one core (served / in-process 0.53,
# req/exec 1.25). Taken one at a time they leave the encoder ~3 ms apart and each takes a scorer instance;
# under deeper queues the batcher still merges (bench (c) runs the "before" variant beside this one).
PYTHON_PREFERRED_BATCH = {USER_ENCODER: [1], ITEM_SCORER: []}


def _tensor(t: Tensor, cls: type[mc.ModelInput] | type[mc.ModelOutput]) -> mc.ModelInput | mc.ModelOutput:
    return cls(name=t.name, data_type=mc.DataType.Value(t.dtype.triton), dims=t.triton_dims())


def input_limits(cfg: AstroConfig, inputs: list[Tensor]) -> dict[str, list[list[int | str]]]:
    """What the Python backend checks, per input: [axis, symbol (equal symbols must agree), what, max]."""
    return {
        t.name: [[i, axis.symbol, axis.what, limit] for i, axis, limit in t.limits(cfg)]
        for t in inputs
        if t.limits(cfg)
    }


def derived_axes(cfg: AstroConfig, inputs: list[Tensor]) -> dict[str, list[int | str]]:
    """What the Python backend checks across inputs: {axis symbol: [factor, other symbol, what]}, the first
    axis's size being factor times the other's (S = Nb * Tb), for axes that both occur among ``inputs``."""
    axes = {a.symbol: a for t in inputs for a in t.axes.values()}
    return {
        a.symbol: [cfg.n_blocks, a.blocks_times.symbol, f"{a.what} = {cfg.n_blocks} * {a.blocks_times.what}"]
        for a in axes.values()
        if a.blocks_times is not None and a.blocks_times.symbol in axes
    }


def queue_policy(bound: QueueBound) -> mc.ModelQueuePolicy:
    """Triton's queue policy for ``bound``: refuse past the size, and past the wait (the caller's own shorter
    timeout overriding it), before anything runs (contract/admission.py)."""
    return mc.ModelQueuePolicy(
        timeout_action=mc.ModelQueuePolicy.REJECT,
        default_timeout_microseconds=bound.timeout_us,
        allow_timeout_override=True,
        max_queue_size=bound.max_queue_size,
    )


def instances(graph: str, target: Target) -> int:
    """Instances a composing model's queue bound is sized for: the python target's own; one elsewhere (the
    tensorrt target runs one GPU instance; the onnxruntime target leaves the instance group to Triton)."""
    return PYTHON_INSTANCES[graph] if target == "python" else 1


def _warmup(cfg: AstroConfig, inputs: list[Tensor]) -> mc.ModelWarmup:
    """One batch-1 request of zeros: dynamic axes at their limit (full blocks), candidates at a
    typical count. Zero ids are padding, so the request exercises the empty-history path too."""
    warm = mc.ModelWarmup(name="zeros", batch_size=1)
    sizes = max_sizes(cfg) | {CANDIDATES.symbol: min(WARMUP_CANDIDATES, cfg.max_candidates)}
    for t in inputs:
        warm.inputs[t.name].CopyFrom(
            mc.ModelWarmup.Input(
                data_type=mc.DataType.Value(t.dtype.triton), dims=list(t.shape(sizes)[1:]), zero_data=True
            )
        )
    return warm


def composing_config(
    cfg: AstroConfig, graph: str, target: Target, cache_dtype: CacheDType, threads: int
) -> mc.ModelConfig:
    inputs, outputs = graph_io(cfg, graph, cache_dtype)
    c = mc.ModelConfig(name=graph, max_batch_size=cfg.max_batch_size)
    c.input.extend(_tensor(t, mc.ModelInput) for t in inputs)
    c.output.extend(_tensor(t, mc.ModelOutput) for t in outputs)
    c.version_policy.latest.num_versions = 1
    c.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    c.dynamic_batching.default_queue_policy.CopyFrom(queue_policy(queue_bound(graph, instances(graph, target))))
    c.model_warmup.append(_warmup(cfg, inputs))
    if graph in CACHED_GRAPHS:
        # Triton's response cache keys on the input bytes: the encoder's inputs are history + scenario only,
        # so a user's later requests reuse its keys/values. Inert on a server started without --cache-config.
        c.response_cache.enable = True
    if target == "tensorrt":
        c.platform = "tensorrt_plan"
        c.default_model_filename = "model.plan"
        c.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    elif target == "onnxruntime":
        c.platform = "onnxruntime_onnx"
        c.default_model_filename = "model.onnx"
        if threads:
            c.parameters["intra_op_thread_count"].string_value = str(threads)
    else:
        c.backend = "python"
        count = instances(graph, target)
        c.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=count))
        c.dynamic_batching.preferred_batch_size.extend(PYTHON_PREFERRED_BATCH[graph])
        c.parameters["onnx_file"].string_value = "model.onnx"
        c.parameters["intra_op_threads"].string_value = str(threads)
        limits = input_limits(cfg, inputs)
        c.parameters["input_limits"].string_value = json.dumps(limits, separators=(",", ":"))
        derived = derived_axes(cfg, inputs)
        if derived:
            c.parameters["derived_axes"].string_value = json.dumps(derived, separators=(",", ":"))
    return c


def ensemble_config(
    cfg: AstroConfig, cache_dtype: CacheDType, provenance: Mapping[str, str] | None = None
) -> mc.ModelConfig:
    inputs, outputs = graph_io(cfg, ENSEMBLE)
    c = mc.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=cfg.max_batch_size)
    c.input.extend(_tensor(t, mc.ModelInput) for t in inputs)
    c.output.extend(_tensor(t, mc.ModelOutput) for t in outputs)
    for graph in GRAPHS:
        g_in, g_out = graph_io(cfg, graph, cache_dtype)
        step = c.ensemble_scheduling.step.add(model_name=graph, model_version=-1)
        for t in g_in:
            step.input_map[t.name] = t.name  # explicit maps: ensemble tensor names equal graph names
        for t in g_out:
            step.output_map[t.name] = t.name
    # identical across targets: what a target changes lives in the composing models' configs; ``provenance``
    # (contract/provenance.py: checkpoint hash, export time, toolchain, target container) says which export it is
    params = {**ServingSpec.from_config(cfg).to_parameters(), "cache_dtype": cache_dtype, **(provenance or {})}
    for k, v in params.items():
        c.parameters[k].string_value = v
    return c


def write_config(path: Path, config: mc.ModelConfig) -> None:
    """Write ``config.pbtxt``, leaving an identical file untouched: a server whose repository is
    rewritten under it treats a touched ensemble config as changed and reloads it, dropping requests."""
    text = "# generated by `python -m export` from the model config: do not edit\n"
    text += text_format.MessageToString(config)
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)


def write_repository(
    out: Path,
    cfg: AstroConfig,
    target: Target,
    model_files: dict[str, Path],
    cache_dtype: CacheDType,
    version: int = 1,
    threads: int = 1,
    progress: Callable[[str], None] = print,
    provenance: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write the three models into ``out``. ``model_files`` maps each composing model to its
    ``model.onnx`` (onnxruntime, python) or ``model.plan`` (tensorrt). Other versions already in
    ``out`` stay (the version policy serves the latest), a stale same-numbered version is replaced.
    Returns the config paths written."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"unknown cache dtype {cache_dtype!r}; choose one of {', '.join(CACHE_DTYPES)}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for graph in GRAPHS:
        vdir = out / graph / str(version)
        if vdir.exists():
            shutil.rmtree(vdir)
        vdir.mkdir(parents=True)
        src = model_files[graph]
        dest = vdir / ("model.plan" if target == "tensorrt" else "model.onnx")
        shutil.copyfile(src, dest)
        if target == "tensorrt" and metadata_path(src).exists():
            shutil.copyfile(metadata_path(src), metadata_path(dest))  # TensorRT version, GPU, precision
        if target == "python":
            shutil.copyfile(PYTHON_MODEL_SOURCE, vdir / "model.py")
        config_path = out / graph / "config.pbtxt"
        write_config(config_path, composing_config(cfg, graph, target, cache_dtype, threads))
        written.append(config_path)
        progress(f"  wrote {graph}/ ({dest.name}, config.pbtxt)")
    (out / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs an (empty) version dir...
    # ...which an object store (S3, GCS) cannot hold: a placeholder makes `aws s3 sync` upload it
    (out / ENSEMBLE / "1" / ".keep").touch()
    config_path = out / ENSEMBLE / "config.pbtxt"
    write_config(config_path, ensemble_config(cfg, cache_dtype, provenance))
    written.append(config_path)
    progress(f"  wrote {ENSEMBLE}/ (ensemble config.pbtxt)")
    return written
