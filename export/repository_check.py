"""Validate a generated model repository without a server: every ``config.pbtxt`` parses as a
Triton ``ModelConfig``, the ensemble wiring is consistent (each step input is an ensemble
input or an earlier step's output; names, dtypes and dims match the composing models; every
ensemble output is produced), and every TensorRT plan will load where it is meant to be served:
its ``model.plan.json`` is read and a plan whose TensorRT version differs from the one the target
NGC Triton container ships is refused (``export/tensorrt_versions.py`` holds the table).
Collects every problem before reporting."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from contract.model_config import ModelConfigError, read_model_config
from contract.tensors import ENSEMBLE
from export.tensorrt_metadata import EngineMetadata, metadata_path
from export.tensorrt_versions import TritonRelease, plan_problem


class RepositoryError(ValueError):
    """The repository would not load, or would load and serve the wrong wiring."""


def _missing_files(model_dir: Path, c: mc.ModelConfig) -> list[str]:
    """The files the model's platform or backend will open, absent from its version directories."""
    if c.backend == "python":
        needed = ["model.py", c.parameters["onnx_file"].string_value or "model.onnx"]
    else:
        default = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}.get(c.platform, "")
        needed = [c.default_model_filename or default]
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        return ["no version directory"]
    return [f"{v.name}/{f} is missing" for v in versions for f in needed if not (v / f).is_file()]


def _sig(t: mc.ModelInput | mc.ModelOutput) -> tuple[str, list[int]]:
    return mc.DataType.Name(t.data_type), list(t.dims)


def plan_errors(model_dir: Path, c: mc.ModelConfig, container: TritonRelease | None) -> list[str]:
    """Problems of the TensorRT plans of one ``tensorrt_plan`` model: each version's plan needs its
    ``model.plan.json`` (what built it), naming this graph, built by the TensorRT ``container`` ships."""
    errors = []
    filename = c.default_model_filename or "model.plan"
    for version in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        plan = version / filename
        if not plan.is_file():
            continue  # reported by _missing_files
        where = f"{version.name}/{filename}"
        try:
            meta = EngineMetadata.read(plan)
        except FileNotFoundError:
            errors.append(f"{where}: no {metadata_path(plan).name} beside it (which TensorRT built it?); re-export")
            continue
        except (ValueError, KeyError, TypeError) as e:
            errors.append(f"{where}: unreadable {metadata_path(plan).name}: {e}")
            continue
        if meta.graph != model_dir.name:
            errors.append(f"{where}: built for graph {meta.graph!r}, served as {model_dir.name!r}")
        if container is not None and (problem := plan_problem(meta.tensorrt_version, container)):
            errors.append(f"{where}: {problem}")
    return errors


def check_repository(root: Path, container: TritonRelease | None = None) -> dict[str, mc.ModelConfig]:
    """Return the parsed configs by model name; raise RepositoryError listing every problem.

    ``container``: the NGC Triton release the repository will be served in; every TensorRT plan
    must come from the TensorRT it ships (``model.plan.json`` is read either way)."""
    try:
        configs = {p.parent.name: read_model_config(p) for p in sorted(root.glob("*/config.pbtxt"))}
    except ModelConfigError as e:
        raise RepositoryError(str(e)) from e
    errors: list[str] = []
    for name, c in configs.items():
        if c.name != name:
            errors.append(f"{name}/config.pbtxt names the model {c.name!r}")
        if c.platform != "ensemble":
            errors += [f"{name}: {e}" for e in _missing_files(root / name, c)]
        if c.platform == "tensorrt_plan":
            errors += [f"{name}: {e}" for e in plan_errors(root / name, c, container)]
    if ENSEMBLE not in configs:
        raise RepositoryError(f"{root}: no {ENSEMBLE}/config.pbtxt (run `make export`)")
    errors += wiring_errors(configs)
    if errors:
        raise RepositoryError(f"{root}: inconsistent model repository:\n  " + "\n  ".join(errors))
    return configs


def wiring_errors(configs: dict[str, mc.ModelConfig]) -> list[str]:
    """Every inconsistency between the ensemble's steps and the composing models' configs."""
    errors: list[str] = []
    ens = configs[ENSEMBLE]
    available = {t.name: _sig(t) for t in ens.input}
    for i, step in enumerate(ens.ensemble_scheduling.step):
        where = f"{ENSEMBLE} step {i} ({step.model_name})"
        sub = configs.get(step.model_name)
        if sub is None:
            errors.append(f"{where}: no model {step.model_name!r} in the repository")
            continue
        if sub.max_batch_size != ens.max_batch_size:
            errors.append(f"{where}: max_batch_size {sub.max_batch_size} != ensemble's {ens.max_batch_size}")
        sub_in = {t.name: _sig(t) for t in sub.input}
        sub_out = {t.name: _sig(t) for t in sub.output}
        unmapped = set(sub_in) - set(step.input_map)
        if unmapped:
            errors.append(f"{where}: inputs {sorted(unmapped)} are not mapped")
        for model_input, ens_tensor in step.input_map.items():
            if model_input not in sub_in:
                errors.append(f"{where}: maps unknown input {model_input!r}")
            elif ens_tensor not in available:
                errors.append(f"{where}: input {model_input!r} reads {ens_tensor!r}, which nothing produced before")
            elif available[ens_tensor] != sub_in[model_input]:
                errors.append(
                    f"{where}: {ens_tensor!r} is {available[ens_tensor]} but {model_input!r} "
                    f"expects {sub_in[model_input]}"
                )
        for model_output, ens_tensor in step.output_map.items():
            if model_output not in sub_out:
                errors.append(f"{where}: maps unknown output {model_output!r}")
            else:
                available[ens_tensor] = sub_out[model_output]
    for t in ens.output:
        if t.name not in available:
            errors.append(f"{ENSEMBLE}: output {t.name!r} is produced by no step")
        elif available[t.name] != _sig(t):
            errors.append(f"{ENSEMBLE}: output {t.name!r} is {available[t.name]} but declared {_sig(t)}")
    return errors
