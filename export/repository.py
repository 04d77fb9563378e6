"""Triton model repository generator: one code path for the ``tensorrt``, ``onnxruntime``
and ``python`` targets (DESIGN.md section 4).

Every ``config.pbtxt`` is built as a ``ModelConfig`` protobuf from the :class:`AstroConfig`
and printed with ``text_format``: ``max_batch_size``, dims, limits and engine profiles
agree by construction, and nothing is hand-edited. The ensemble ``astro`` is identical
across targets and publishes the serving limits and block spec as ``parameters``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contract.config import AstroConfig
from contract.serving_spec import (
    CANDIDATE_INPUT,
    ENSEMBLE,
    HISTORY_INPUTS,
    ITEM_SCORER,
    REQUEST_INPUTS,
    SCORES_OUTPUT,
    USER_ENCODER,
    USER_KEYS,
    USER_MASK,
    USER_VALUES,
    ServingSpec,
)
from export.tensorrt_engine import metadata_path

Target = Literal["tensorrt", "onnxruntime", "python"]
TARGETS: tuple[Target, ...] = ("tensorrt", "onnxruntime", "python")
CACHE_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
PYTHON_MODEL_SOURCE = Path(__file__).resolve().parent.parent / "serve" / "onnx_python_model.py"
QUEUE_DELAY_US = 200  # dynamic batching window: small against a "tens of milliseconds" budget
WARMUP_CANDIDATES = 64  # warmup request size: a typical ranking request, not the worst case


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output. ``dims`` exclude the batch axis; -1 marks a dynamic axis whose
    largest legal size is in ``limits`` as {axis (with batch): (what it is, max)}."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    limits: tuple[tuple[int, str, int], ...] = ()


def graph_io(cfg: AstroConfig, cache_dtype: str) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """(inputs, outputs) of both composing models, in the order of the ONNX graphs."""
    nb, tb_max, s_max = cfg.n_blocks, cfg.max_block_len, cfg.max_user_tokens
    kv_dims = (cfg.n_layers, cfg.n_heads, -1, cfg.head_dim)  # [L, H, S, dh]
    tb_limit = ((2, "block length Tb (max_block_len)", tb_max),)
    s_limit_kv = ((3, "user tokens S = Nb*Tb", s_max),)
    s_limit_mask = ((1, "user tokens S = Nb*Tb", s_max),)
    cache_type = CACHE_TYPES[cache_dtype]
    cache = [
        TensorSpec(USER_KEYS, cache_type, kv_dims, s_limit_kv),
        TensorSpec(USER_VALUES, cache_type, kv_dims, s_limit_kv),
        TensorSpec(USER_MASK, "TYPE_BOOL", (-1,), s_limit_mask),
    ]
    history = [TensorSpec(n, "TYPE_INT64", (nb, -1), tb_limit) for n in HISTORY_INPUTS]
    request = [TensorSpec(n, "TYPE_INT64", (1,)) for n in REQUEST_INPUTS]
    candidates = TensorSpec(
        CANDIDATE_INPUT, "TYPE_INT64", (-1,), ((1, "candidates N (max_candidates)", cfg.max_candidates),)
    )
    scores = TensorSpec(SCORES_OUTPUT, "TYPE_FP32", (-1, cfg.n_tasks))
    return {
        USER_ENCODER: (history + request, cache),
        ITEM_SCORER: ([candidates, request[0], *cache], [scores]),
    }


def ensemble_io(cfg: AstroConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The public contract (DESIGN.md section 3)."""
    io = graph_io(cfg, "fp32")  # the cache dtype only changes tensors inside the ensemble
    user_in, _ = io[USER_ENCODER]
    scorer_in, scorer_out = io[ITEM_SCORER]
    return [*user_in, scorer_in[0]], scorer_out


def _tensor(t: TensorSpec, cls: type[mc.ModelInput] | type[mc.ModelOutput]) -> mc.ModelInput | mc.ModelOutput:
    return cls(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=list(t.dims))


def _warmup(inputs: list[TensorSpec]) -> mc.ModelWarmup:
    """One batch-1 request of zeros: dynamic axes at their limit (full blocks), candidates at a
    typical count. Zero ids are padding, so the request exercises the empty-history path too."""
    warm = mc.ModelWarmup(name="zeros", batch_size=1)
    for t in inputs:
        maxima = {axis - 1: limit for axis, _, limit in t.limits}
        dims = [maxima[i] if d == -1 else d for i, d in enumerate(t.dims)]
        if t.name == CANDIDATE_INPUT:
            dims = [min(WARMUP_CANDIDATES, dims[0])]
        warm.inputs[t.name].CopyFrom(
            mc.ModelWarmup.Input(data_type=mc.DataType.Value(t.data_type), dims=dims, zero_data=True)
        )
    return warm


def composing_config(cfg: AstroConfig, graph: str, target: Target, cache_dtype: str, threads: int) -> mc.ModelConfig:
    inputs, outputs = graph_io(cfg, cache_dtype)[graph]
    c = mc.ModelConfig(name=graph, max_batch_size=cfg.max_batch_size)
    c.input.extend(_tensor(t, mc.ModelInput) for t in inputs)
    c.output.extend(_tensor(t, mc.ModelOutput) for t in outputs)
    c.version_policy.latest.num_versions = 1
    c.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    c.model_warmup.append(_warmup(inputs))
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
        c.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
        c.parameters["onnx_file"].string_value = "model.onnx"
        c.parameters["intra_op_threads"].string_value = str(threads)
        limits = {t.name: [[axis, what, limit] for axis, what, limit in t.limits] for t in inputs if t.limits}
        c.parameters["input_limits"].string_value = json.dumps(limits, separators=(",", ":"))
    return c


def ensemble_config(cfg: AstroConfig, cache_dtype: str) -> mc.ModelConfig:
    inputs, outputs = ensemble_io(cfg)
    c = mc.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=cfg.max_batch_size)
    c.input.extend(_tensor(t, mc.ModelInput) for t in inputs)
    c.output.extend(_tensor(t, mc.ModelOutput) for t in outputs)
    io = graph_io(cfg, cache_dtype)
    for graph in (USER_ENCODER, ITEM_SCORER):
        g_in, g_out = io[graph]
        step = c.ensemble_scheduling.step.add(model_name=graph, model_version=-1)
        for t in g_in:
            step.input_map[t.name] = t.name  # explicit maps: ensemble tensor names equal graph names
        for t in g_out:
            step.output_map[t.name] = t.name
    # identical across targets: what a target changes lives in the composing models' configs
    params = {**ServingSpec.from_config(cfg).to_parameters(), "cache_dtype": cache_dtype, "preset": cfg.name}
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
    cache_dtype: str,
    version: int = 1,
    threads: int = 1,
    progress: Callable[[str], None] = print,
) -> list[Path]:
    """Write the three models into ``out``. ``model_files`` maps each composing model to its
    ``model.onnx`` (onnxruntime, python) or ``model.plan`` (tensorrt). Other versions already in
    ``out`` stay (the version policy serves the latest), a stale same-numbered version is replaced.
    Returns the config paths written."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if cache_dtype not in CACHE_TYPES:
        raise ValueError(f"unknown cache dtype {cache_dtype!r}; choose one of {', '.join(CACHE_TYPES)}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for graph in (USER_ENCODER, ITEM_SCORER):
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
    (out / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs an (empty) version dir
    config_path = out / ENSEMBLE / "config.pbtxt"
    write_config(config_path, ensemble_config(cfg, cache_dtype))
    written.append(config_path)
    progress(f"  wrote {ENSEMBLE}/ (ensemble config.pbtxt)")
    return written
