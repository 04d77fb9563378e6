"""What of the TensorRT build is ours, on Polygraphy's objects: the profile from the declarations, the
build recipe (strongly typed, no precision flag, timing cache), the GPU memory arithmetic behind the
profile maxima, supported versions and containers, metadata and the repository check that reads it,
and the chain comparison through Polygraphy's Comparator (run here on two ONNX Runtime chains).

Runs everywhere (no TensorRT, no GPU). The build itself is tested in test_tensorrt_engine.py where
TensorRT and a GPU exist.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

from contract.config import PRESETS, AstroConfig
from contract.tensors import (
    CACHE_TENSORS,
    CANDIDATE_INPUT,
    GRAPH_IO,
    GRAPHS,
    HISTORY_INPUTS,
    REQUEST_INPUTS,
    SCORES_OUTPUT,
    USER_KEYS,
    USER_MASK,
    USER_VALUES,
    CacheDType,
)
from export.onnx_graphs import GraphPaths
from export.precision import convert_file
from export.repository import write_repository
from export.repository_check import RepositoryError, check_repository
from export.tensorrt_budget import (
    ATTENTION_COPIES,
    ENGINE_BUDGET_GIB,
    FLOAT_BYTES,
    GPU_MEMORY_GIB,
    GiB,
    fit_to_gpu,
    gpu_bytes,
    memory_estimate,
    profile_max_estimates,
)
from export.tensorrt_build import (
    TensorRTUnavailable,
    build_engine,
    engine_recipe,
    main,
    min_compute_capability,
    parse_compute_capability,
    tensorrt_available,
)
from export.tensorrt_metadata import EngineMetadata, metadata_path
from export.tensorrt_parity import TOLERANCES, Chain, compare_chains
from export.tensorrt_profiles import (
    ShapeRange,
    output_shapes,
    polygraphy_profile,
    profile_shapes,
)
from export.tensorrt_versions import (
    SUPPORTED,
    TRITON_RELEASES,
    TensorRTVersionError,
    is_supported,
    parse_version,
    plan_problem,
    release,
    releases_shipping,
    require_supported,
    same_plan_format,
)
from model.random_inputs import random_request

ALL_PRESETS = sorted(PRESETS)


def _dims(rng: ShapeRange) -> list[tuple[int, int, int]]:
    """Per-axis (min, opt, max)."""
    return list(zip(rng.min, rng.opt, rng.max, strict=True))


# ---- profiles ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_user_encoder_profile_matches_config(preset: str) -> None:
    cfg = AstroConfig.from_name(preset)
    prof = profile_shapes(cfg, "user_encoder")
    assert list(prof) == list(GRAPH_IO["user_encoder"][0]) == [*HISTORY_INPUTS, "request_scenario"]
    for name in HISTORY_INPUTS:  # [B, Nb, Tb]
        b, nb, tb = _dims(prof[name])
        assert (b[0], b[2]) == (1, cfg.max_batch_size), name
        assert nb == (cfg.n_blocks,) * 3, name
        assert (tb[0], tb[2]) == (1, cfg.max_block_len), name
    for name in ("request_scenario",):  # [B, 1]; the encoder never sees the request time
        assert prof[name] == ShapeRange((1, 1), prof[name].opt, (cfg.max_batch_size, 1)), name
        assert prof[name].opt[1] == 1


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_item_scorer_profile_matches_config(preset: str) -> None:
    cfg = AstroConfig.from_name(preset)
    prof = profile_shapes(cfg, "item_scorer")
    assert list(prof) == list(GRAPH_IO["item_scorer"][0])
    assert list(prof) == [CANDIDATE_INPUT, *REQUEST_INPUTS, HISTORY_INPUTS[3], *CACHE_TENSORS]
    b, n = _dims(prof[CANDIDATE_INPUT])
    assert (b[0], b[2], n[0], n[2]) == (1, cfg.max_batch_size, 1, cfg.max_candidates)
    for name in (USER_KEYS, USER_VALUES):  # [B, L, H, S, dh]
        _, layers, heads, s, dh = _dims(prof[name])
        assert layers == (cfg.n_layers,) * 3, name
        assert heads == (cfg.n_heads,) * 3, name
        assert dh == (cfg.head_dim,) * 3, name
        assert (s[0], s[2]) == (cfg.n_blocks, cfg.max_user_tokens), name
    assert len(prof[USER_MASK].min) == 2  # [B, S]


@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_min_opt_max_ordered_and_batch_axes_agree(preset: str, graph: str) -> None:
    cfg = AstroConfig.from_name(preset)
    prof = profile_shapes(cfg, graph)
    for name, rng in {**prof, **output_shapes(cfg, graph)}.items():
        assert len(rng.min) == len(rng.opt) == len(rng.max), name
        for axis, (lo, opt, hi) in enumerate(_dims(rng)):
            assert 1 <= lo <= opt <= hi, f"{name} axis {axis}: {lo} <= {opt} <= {hi} fails"
    # one request's inputs share B: the same (min, opt, max) on axis 0 everywhere
    assert len({_dims(r)[0] for r in prof.values()}) == 1


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_s_is_nb_times_tb_in_both_graphs(preset: str) -> None:
    """The encoder's cache outputs land exactly inside the scorer's profile, S = Nb*Tb at min/opt/max."""
    cfg = AstroConfig.from_name(preset)
    enc_in, enc_out = profile_shapes(cfg, "user_encoder"), output_shapes(cfg, "user_encoder")
    scorer_in = profile_shapes(cfg, "item_scorer")
    for name in CACHE_TENSORS:
        assert enc_out[name] == scorer_in[name], name
    tb = _dims(enc_in[HISTORY_INPUTS[0]])[2]
    s_axis = {USER_KEYS: 3, USER_VALUES: 3, USER_MASK: 1}
    for name, axis in s_axis.items():
        assert _dims(scorer_in[name])[axis] == tuple(cfg.n_blocks * t for t in tb), name
    assert scorer_in[USER_KEYS] == scorer_in[USER_VALUES]


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_opt_is_documented_choice(preset: str) -> None:
    """opt: half the batch and candidate limits (rounded up), full block length."""
    cfg = AstroConfig.from_name(preset)
    b, n = profile_shapes(cfg, "item_scorer")[CANDIDATE_INPUT].opt
    tb = profile_shapes(cfg, "user_encoder")[HISTORY_INPUTS[0]].opt[2]
    assert (b, tb, n) == (-(-cfg.max_batch_size // 2), cfg.max_block_len, -(-cfg.max_candidates // 2))


def test_scores_output_shape() -> None:
    cfg = AstroConfig.from_name("small")
    rng = output_shapes(cfg, "item_scorer")[SCORES_OUTPUT]
    assert rng.max == (cfg.max_batch_size, cfg.max_candidates, cfg.n_tasks)
    assert rng.min == (1, 1, cfg.n_tasks)


def test_unknown_graph_rejected() -> None:
    with pytest.raises(ValueError, match="unknown graph"):
        profile_shapes(AstroConfig.from_name("tiny"), "ranker")


# ---- Polygraphy's objects: the profile and the build recipe ------------------------------------
@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_polygraphy_profile_is_the_declared_profile(preset: str, graph: str) -> None:
    """The Profile handed to CreateConfig holds exactly the graph's inputs, in order, with the config's ranges."""
    cfg = AstroConfig.from_name(preset)
    profile = polygraphy_profile(cfg, graph)
    assert list(profile.keys()) == list(GRAPH_IO[graph][0])
    assert _ranges_of(profile) == {name: tuple(rng) for name, rng in profile_shapes(cfg, graph).items()}


def _ranges_of(profile: Any) -> dict[str, tuple[tuple[int, ...], ...]]:
    """A Polygraphy Profile as {input: (min, opt, max)} (its ShapeTuples compare by identity)."""
    return {name: (tuple(s.min), tuple(s.opt), tuple(s.max)) for name, s in profile.items()}


def test_recipe_strongly_typed_with_the_contract_profile_and_timing_cache(tmp_path: Path) -> None:
    """What Polygraphy is asked to build: the graph's ONNX file into a strongly typed network (TensorRT 11 has
    no other kind), the config's profile, no precision flag (removed in 11: precision comes from the graph),
    TF32 off (fp32 parity), the timing cache loaded from and saved to one file, the workspace limit as given."""
    cfg = AstroConfig.from_name("tiny")
    onnx_path, cache = tmp_path / "item_scorer.onnx", tmp_path / "timing.cache"
    recipe = engine_recipe(onnx_path, cfg, "item_scorer", cache, {"WORKSPACE-stand-in": 3 * GiB})
    assert recipe.network.path == str(onnx_path)
    assert recipe.network.strongly_typed is True
    config = recipe.config
    assert [_ranges_of(p) for p in config.profiles] == [_ranges_of(polygraphy_profile(cfg, "item_scorer"))]
    assert config.profiles[0][CANDIDATE_INPUT].max == (cfg.max_batch_size, cfg.max_candidates)
    flags = {name: getattr(config, name) for name in ("fp16", "bf16", "int8", "fp8", "tf32")}
    assert flags == dict.fromkeys(flags, False), flags
    assert config.precision_constraints is None and config.calibrator is None and config.algorithm_selector is None
    assert config.timing_cache_path == str(cache) and recipe.engine.timing_cache_path == str(cache)
    assert config.memory_pool_limits == {"WORKSPACE-stand-in": 3 * GiB}
    # the engine loader builds from exactly these two loaders
    assert recipe.engine._network is recipe.network and recipe.engine._config is recipe.config
    no_cache = engine_recipe(onnx_path, cfg, "user_encoder")
    assert no_cache.config.timing_cache_path is None and no_cache.engine.timing_cache_path is None


def test_recipe_needs_no_tensorrt(tmp_path: Path) -> None:
    """Polygraphy imports TensorRT lazily: the recipe is assembled (and these tests run) without it."""
    code = (
        "import sys; from pathlib import Path; from contract.config import AstroConfig; "
        "from export.tensorrt_build import engine_recipe; "
        f"engine_recipe(Path({str(tmp_path / 'x.onnx')!r}), AstroConfig.from_name('tiny'), 'user_encoder', "
        f"Path({str(tmp_path / 'cache')!r})); "
        "assert 'tensorrt' not in sys.modules, 'imported tensorrt'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


TENSORRT_SOURCES = [Path(__file__).parents[1] / "export" / f"tensorrt_{m}.py" for m in ("build", "parity")]
# The weakly typed API TensorRT 11 removed (migration guide, "Removed Python APIs and Replacements")
REMOVED_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "DIRECT_IO"}
REMOVED_FLAGS |= {"PREFER_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH"}
REMOVED_MEMBERS = {"platform_has_fast_fp16", "set_output_type", "int8_calibrator", "algorithm_selector"}
REMOVED_MEMBERS |= {"device_memory_size", "set_calibration_profile", "quantization_flags"}
# CreateConfig's keywords that set those flags (Polygraphy still accepts them for TensorRT 10)
REMOVED_KEYWORDS = {"fp16", "bf16", "int8", "fp8", "precision_constraints", "calibrator", "algorithm_selector"}


@pytest.mark.parametrize("source", TENSORRT_SOURCES, ids=lambda p: p.name)
def test_no_api_removed_in_tensorrt_11(source: Path) -> None:
    """Neither a removed flag or member nor a CreateConfig keyword that sets one appears in the code."""
    used = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Attribute):
            on_flags = "Flag" in ast.unparse(node.value)  # BuilderFlag.X, NetworkDefinitionCreationFlag.X
            if (on_flags and node.attr in REMOVED_FLAGS) or node.attr in REMOVED_MEMBERS:
                used.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.keyword) and node.arg in REMOVED_KEYWORDS:
            used.append(f"line {node.lineno}: {node.arg}=")
        if isinstance(node, ast.Assign):
            used += [f"line {node.lineno}: .precision =" for t in node.targets if getattr(t, "attr", "") == "precision"]
    assert not used, f"TensorRT-11-removed API in {source.name}:\n" + "\n".join(used)


def test_compute_capability_gate() -> None:
    assert min_compute_capability("bf16") == (8, 0)  # bf16 kernels need Ampere
    assert min_compute_capability("fp16") == min_compute_capability("fp32") == (7, 5)
    assert parse_compute_capability("9.0") == (9, 0)
    assert parse_compute_capability("[N/A]") is None
    assert parse_compute_capability("unknown") is None


# ---- metadata ------------------------------------------------------------------------------
def _metadata() -> EngineMetadata:
    cfg = AstroConfig.from_name("tiny")
    return EngineMetadata(
        graph="item_scorer",
        config_name=cfg.name,
        precision="fp16",
        cache_dtype="fp16",
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        onnx_file="item_scorer.onnx",
        onnx_sha256="0" * 64,
        built_at="2026-01-01T00:00:00+00:00",
        build_seconds=12.5,
        workspace_gib=4.0,
        profiles=profile_shapes(cfg, "item_scorer"),
        io_dtypes={"cand_item_ids": "INT64", "user_mask": "BOOL", "scores": "FLOAT"},
        fp32_nodes=("node_softmax", "node_layer_norm"),
    )


def test_metadata_json_round_trip(tmp_path: Path) -> None:
    meta = _metadata()
    assert EngineMetadata.from_json(meta.to_json()) == meta
    plan = tmp_path / "item_scorer" / "1" / "model.plan"
    written = meta.write(plan)
    assert written == metadata_path(plan) == plan.parent / "model.plan.json"
    assert EngineMetadata.read(plan) == meta
    assert '"max": [\n' in written.read_text()  # profiles as plain JSON lists


def test_metadata_rejects_unknown_keys() -> None:
    d = _metadata().to_dict()
    d["max_workspace"] = 1
    with pytest.raises(ValueError, match="unknown engine metadata keys"):
        EngineMetadata.from_dict(d)


# ---- without TensorRT ----------------------------------------------------------------------
def test_modules_import_without_tensorrt() -> None:
    modules = "export.tensorrt_build, export.tensorrt_parity, export.tensorrt_budget, export.tensorrt_metadata"
    code = f"import sys, {modules}; assert 'tensorrt' not in sys.modules, 'imported at module load'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_engine_builder_and_precision_load_without_torch() -> None:
    """An engine is built from ONNX files: a TensorRT host needs no PyTorch for it."""
    code = "import sys, export.tensorrt_build, export.precision; assert 'torch' not in sys.modules, 'imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_build_engine_raises_tensorrt_unavailable(tmp_path: Path) -> None:
    ok, reason = tensorrt_available()
    if ok:
        pytest.skip(f"TensorRT and a GPU are present here ({reason}); the engine tests cover the build")
    onnx_path = tmp_path / "user_encoder.onnx"
    onnx_path.write_bytes(b"never parsed: the TensorRT check comes first")
    with pytest.raises(TensorRTUnavailable) as err:
        build_engine(onnx_path, tmp_path / "model.plan", AstroConfig.from_name("tiny"), "user_encoder", "fp16")
    message = str(err.value)
    assert "pip install '.[gpu]'" in message and "nvcr.io/nvidia/tritonserver" in message
    assert "\n" not in message and len(message) < 300, message
    assert not (tmp_path / "model.plan").exists()


def test_check_cli_reports_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    ok, reason = tensorrt_available()
    if ok:
        pytest.skip(f"TensorRT and a GPU are present here ({reason})")
    assert main([]) == 1
    assert capsys.readouterr().out.strip() == reason


# ---- GPU memory at the profile maxima ------------------------------------------------------------
def test_memory_arithmetic_by_hand() -> None:
    """The attention tensors dominate: scorer [B, Nb, H, N, Tb+1], encoder [B, Nb, H, Tb, Tb], per copy."""
    cfg = AstroConfig.from_name("climber-large")  # Nb=4, H=8, Tb=200
    b, n, tb, nb, h = 64, 2048, 200, 4, 8
    scorer = memory_estimate(cfg, "item_scorer", b, tb, n)
    assert scorer.attention == ATTENTION_COPIES * b * nb * h * n * (tb + 1) * FLOAT_BYTES
    assert scorer.attention == 4 * 843_055_104 * 4  # 843M elements per copy: 3.1 GiB each
    encoder = memory_estimate(cfg, "user_encoder", b, tb, n)
    assert encoder.attention == ATTENTION_COPIES * b * nb * h * tb * tb * FLOAT_BYTES + 2 * b * nb * tb * tb * 8
    # the cache both graphs hold: keys and values [B, L, H, S, dh] in fp32, S = Nb*Tb
    cache = 2 * b * cfg.n_layers * h * nb * tb * cfg.head_dim * FLOAT_BYTES
    assert scorer.io > cache and encoder.io > cache
    assert scorer.total > 16 * GiB  # the config's own maxima would not fit a 24 GB card


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_every_preset_fits_a_24_gb_gpu(preset: str) -> None:
    cfg = AstroConfig.from_name(preset)
    fitted, changes = fit_to_gpu(cfg)
    estimates = profile_max_estimates(fitted)
    for graph in GRAPHS:
        est = estimates[graph]
        assert est.total <= ENGINE_BUDGET_GIB * GiB, est.describe()
        # the profile is the fitted config's: its maxima are what was estimated
        prof = profile_shapes(fitted, graph)
        assert max(r.max[0] for r in prof.values()) == fitted.max_batch_size
    assert gpu_bytes(fitted) <= GPU_MEMORY_GIB * GiB, f"{gpu_bytes(fitted) / GiB:.1f} GiB"
    # only the limits move, and only down; the client chunks what the published limits exclude
    assert fitted.max_candidates <= cfg.max_candidates and fitted.max_batch_size <= cfg.max_batch_size
    assert fitted.model_dump(exclude={"max_candidates", "max_batch_size"}) == cfg.model_dump(
        exclude={"max_candidates", "max_batch_size"}
    )
    assert (fitted == cfg) == (changes == [])
    if fitted.max_candidates != cfg.max_candidates:
        assert fitted.max_candidates % 64 == 0
        # the largest such N: one step of 64 more would not fit
        bigger = memory_estimate(
            cfg, "item_scorer", fitted.max_batch_size, cfg.max_block_len, fitted.max_candidates + 64
        )
        assert bigger.total > ENGINE_BUDGET_GIB * GiB


def test_fit_lowers_only_what_does_not_fit() -> None:
    assert fit_to_gpu(AstroConfig.from_name("small")) == (AstroConfig.from_name("small"), [])
    large, changes = fit_to_gpu(AstroConfig.from_name("climber-large"))
    assert changes == [f"max_candidates 2048 -> {large.max_candidates}"] and large.max_batch_size == 64
    _, changes = fit_to_gpu(AstroConfig.from_name("climber-large"), budget_gib=0.5)
    assert any(c.startswith("max_batch_size") for c in changes), changes
    with pytest.raises(ValueError, match="even at batch 1"):
        fit_to_gpu(AstroConfig.from_name("climber-large"), budget_gib=0.001)


# ---- supported TensorRT versions and NGC containers -------------------------------------------------
def test_supported_range_and_gpu_extra_agree() -> None:
    assert is_supported("10.12.0.36") and is_supported("10.16.0.72") and is_supported("11.4.0.106")
    assert not is_supported("10.11.0.33") and not is_supported("10.5.0.18") and not is_supported("12.0.0")
    with pytest.raises(TensorRTVersionError, match=re.escape(SUPPORTED)):
        require_supported("10.8.0.43")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert f"tensorrt{SUPPORTED}" in pyproject["project"]["optional-dependencies"]["gpu"]


def test_version_parsing_and_plan_format() -> None:
    assert parse_version("10.13.3.9") == (10, 13, 3) and parse_version("11.1") == (11, 1, 0)
    assert same_plan_format("10.13.3.9", "10.13.3.1") and not same_plan_format("10.13.3.9", "10.13.2.6")
    with pytest.raises(TensorRTVersionError, match="cannot read"):
        parse_version("ten")


def test_release_table() -> None:
    for name, row in TRITON_RELEASES.items():
        assert re.fullmatch(r"\d\d\.\d\d", name) and row.release == name
        assert row.image == f"nvcr.io/nvidia/tritonserver:{name}-py3"
        assert row.source.endswith(f"rel-{name.replace('.', '-')}.html")
        parse_version(row.tensorrt)
    assert release("25.10").tensorrt.startswith("10.13") and release("25.10-py3") == release("25.10")
    assert [r.release for r in releases_shipping("10.13.3.9")] == ["25.09", "25.10"]
    with pytest.raises(TensorRTVersionError, match=r"unknown NGC Triton release .19\.01."):
        release("19.01")
    assert plan_problem("10.13.3.9", release("25.10")) is None
    problem = plan_problem("10.13.3.9", release("25.12"))
    assert problem is not None and "ships TensorRT 10.14.1.48" in problem and "25.09, 25.10" in problem


def _tensorrt_repository(tmp_path: Path, tensorrt_version: str, graph_names: dict[str, str] | None = None) -> Path:
    """A tensorrt-target repository with placeholder plans and real metadata files beside them."""
    cfg = AstroConfig.from_name("tiny")
    files: dict[str, Path] = {}
    for graph in GRAPHS:
        plan = tmp_path / "build" / f"{graph}.plan"
        plan.parent.mkdir(parents=True, exist_ok=True)
        plan.write_bytes(b"placeholder: the check reads the metadata, never the plan")
        meta = dataclasses.replace(
            _metadata(),
            graph=(graph_names or {}).get(graph, graph),
            tensorrt_version=tensorrt_version,
            profiles=profile_shapes(cfg, graph),
        )
        meta.write(plan)
        files[graph] = plan
    root = tmp_path / "repo"
    write_repository(root, cfg, "tensorrt", files, "fp32", progress=lambda _: None)
    return root


def test_repository_check_refuses_a_plan_from_another_tensorrt(tmp_path: Path) -> None:
    root = _tensorrt_repository(tmp_path, "10.13.3.9")
    assert (root / "item_scorer" / "1" / "model.plan.json").is_file()
    check_repository(root, release("25.10"))  # 25.10 ships 10.13.3.9: loads
    check_repository(root)  # no container named: metadata still read and checked
    with pytest.raises(RepositoryError) as err:
        check_repository(root, release("25.12"))
    message = str(err.value)
    for graph in GRAPHS:
        assert (
            f"{graph}: 1/model.plan: built with TensorRT 10.13.3.9 but nvcr.io/nvidia/tritonserver:25.12-py3" in message
        )
    assert "serve it in 25.09, 25.10 instead" in message


def test_repository_check_needs_the_metadata_and_the_right_graph(tmp_path: Path) -> None:
    root = _tensorrt_repository(tmp_path, "10.13.3.9", {"item_scorer": "user_encoder"})
    (root / "user_encoder" / "1" / "model.plan.json").unlink()
    with pytest.raises(RepositoryError) as err:
        check_repository(root, release("25.10"))
    message = str(err.value)
    assert "user_encoder: 1/model.plan: no model.plan.json beside it" in message
    assert "item_scorer: 1/model.plan: built for graph 'user_encoder', served as 'item_scorer'" in message


# ---- the chain comparison through Polygraphy's Comparator, on two ONNX Runtime chains --------------
def _ort_chain(paths: GraphPaths) -> Chain:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    def runner(path: Path) -> object:
        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]))

    return Chain(runner(paths.user_encoder), runner(paths.item_scorer))


def _scaled_weights(src: Path, dst: Path, factor: float) -> Path:
    """A copy of an ONNX graph with every float weight times ``factor``: the same graph, wrong weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype), init.name))
    onnx.save(model, str(dst))
    return dst


def test_compare_chains_passes_the_same_graph_and_names_every_mismatch(
    tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path
) -> None:
    """The comparison the engine tests run, on real numbers from two chains: the fp32 chain agrees with itself
    and, within the fp16 tolerances, with the fp16-compute graphs of the same model, whose keys/values the fp32
    tolerances refuse tensor by tensor; a scorer with wrong weights is caught alone and end to end."""
    cfg = AstroConfig.from_name("tiny")
    fp32 = tiny_graphs("fp32")
    low = GraphPaths(tmp_path / "user_encoder.fp16.onnx", tmp_path / "item_scorer.fp16.onnx")
    for graph in GRAPHS:
        convert_file(getattr(fp32, graph), getattr(low, graph), "fp16")
    wrong = GraphPaths(fp32.user_encoder, _scaled_weights(fp32.item_scorer, tmp_path / "item_scorer.onnx", 1.05))
    rng = np.random.default_rng(0)
    requests = [random_request(cfg, rng, 2, cfg.max_block_len, 16, empty_users=1), random_request(cfg, rng, 1, 1, 1)]

    def compare(candidate: GraphPaths, precision: str) -> list[str]:
        return compare_chains(_ort_chain(fp32), _ort_chain(candidate), requests, TOLERANCES[precision], cfg.tasks)

    assert compare(fp32, "fp32") == []
    assert compare(low, "fp16") == []
    text = "\n".join(compare(low, "fp32"))
    for i in range(len(requests)):
        assert f"encoder, request {i}: user_keys: max |diff|" in text, text
        assert f"encoder, request {i}: user_values: max |diff|" in text, text
    assert USER_MASK not in text, "the mask is exact in both precisions"
    problems = compare(wrong, "fp32")
    text = "\n".join(problems)
    assert not any(p.startswith("encoder,") for p in problems), text  # the encoders are the same graph
    for i in range(len(requests)):
        assert f"scorer on the reference cache, request {i}: scores: max |diff|" in text, text
        assert f"encoder -> scorer, request {i}: scores: max |diff|" in text, text
