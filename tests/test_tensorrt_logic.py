"""The TensorRT engine builder's pure logic: profiles, I/O checks, precision, metadata.

Runs everywhere (no TensorRT, no GPU). The build itself is tested in
test_tensorrt_engine.py where TensorRT and a GPU exist.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract.config import PRESETS, AstroConfig
from contract.tensors import (
    CACHE_TENSORS,
    CANDIDATE_INPUT,
    HISTORY_INPUTS,
    REQUEST_INPUTS,
    SCORES_OUTPUT,
    USER_KEYS,
    USER_MASK,
    USER_VALUES,
)
from export.tensorrt_engine import (
    GRAPHS,
    EngineMetadata,
    Graph,
    Precision,
    ShapeRange,
    TensorRTUnavailable,
    _parse_compute_capability,
    build_engine,
    io_mismatches,
    keep_fp32,
    main,
    metadata_path,
    min_compute_capability,
    output_shapes,
    precision_flags,
    profile_shapes,
    shape_mismatches,
    tensorrt_available,
)

ALL_PRESETS = sorted(PRESETS)


def _dims(rng: ShapeRange) -> list[tuple[int, int, int]]:
    """Per-axis (min, opt, max)."""
    return list(zip(rng.min, rng.opt, rng.max, strict=True))


# ---- profiles ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_user_encoder_profile_matches_config(preset: str) -> None:
    cfg = AstroConfig.from_name(preset)
    prof = profile_shapes(cfg, "user_encoder")
    assert list(prof) == [*HISTORY_INPUTS, *REQUEST_INPUTS]
    for name in HISTORY_INPUTS:  # [B, Nb, Tb]
        b, nb, tb = _dims(prof[name])
        assert (b[0], b[2]) == (1, cfg.max_batch_size), name
        assert nb == (cfg.n_blocks,) * 3, name
        assert (tb[0], tb[2]) == (1, cfg.max_block_len), name
    for name in REQUEST_INPUTS:  # [B, 1]
        assert prof[name] == ShapeRange((1, 1), prof[name].opt, (cfg.max_batch_size, 1)), name
        assert prof[name].opt[1] == 1


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_item_scorer_profile_matches_config(preset: str) -> None:
    cfg = AstroConfig.from_name(preset)
    prof = profile_shapes(cfg, "item_scorer")
    assert list(prof) == [CANDIDATE_INPUT, "request_scenario", *CACHE_TENSORS]
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
def test_min_opt_max_ordered_and_batch_axes_agree(preset: str, graph: Graph) -> None:
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
        profile_shapes(AstroConfig.from_name("tiny"), "ranker")  # type: ignore[arg-type]


# ---- network I/O checks --------------------------------------------------------------------
IO = dict[str, tuple[tuple[int, ...], str]]


def _declared(cfg: AstroConfig, graph: Graph, cache: str = "HALF") -> tuple[IO, IO]:
    """A well-formed parsed network's I/O: dynamic axes as -1, the rest static, right dtypes."""

    def decl(rng: ShapeRange) -> tuple[int, ...]:
        return tuple(lo if lo == hi else -1 for lo, hi in zip(rng.min, rng.max, strict=True))

    def dtype(name: str) -> str:
        return {USER_KEYS: cache, USER_VALUES: cache, USER_MASK: "BOOL", SCORES_OUTPUT: "FLOAT"}.get(name, "INT64")

    ins = {k: (decl(v), dtype(k)) for k, v in profile_shapes(cfg, graph).items()}
    outs = {k: (decl(v), dtype(k)) for k, v in output_shapes(cfg, graph).items()}
    return ins, outs


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("cache", ["FLOAT", "HALF"])
def test_well_formed_network_passes(graph: Graph, cache: str) -> None:
    cfg = AstroConfig.from_name("tiny")
    ins, outs = _declared(cfg, graph, cache)
    assert io_mismatches(cfg, graph, ins, outs) == []


def test_every_io_problem_is_reported_with_the_tensor_name() -> None:
    cfg = AstroConfig.from_name("tiny")
    ins, outs = _declared(cfg, "item_scorer")
    ins["cand_item_ids"] = ((8, -1), "INT32")  # static batch, INT32 ids (a TensorRT 8 style export)
    ins[USER_VALUES] = (ins[USER_VALUES][0], "FLOAT")  # keys HALF, values FLOAT
    del ins[USER_MASK]
    outs["extra"] = ((-1,), "FLOAT")
    problems = "\n".join(io_mismatches(cfg, "item_scorer", ins, outs))
    assert "missing inputs ['user_mask']" in problems
    assert "unexpected outputs ['extra']" in problems
    assert "cand_item_ids: dtype INT32" in problems
    assert "cand_item_ids: axis 0 is static (8)" in problems
    assert "user_keys is HALF but user_values is FLOAT" in problems


def test_shape_mismatches() -> None:
    rng = ShapeRange((1, 2, 1), (4, 2, 6), (8, 2, 12))
    assert shape_mismatches("x", (-1, 2, -1), rng) == []
    assert shape_mismatches("x", (-1, -1, -1), rng) == []  # dynamic where the config is static is fine
    assert "rank 2" in shape_mismatches("x", (-1, 2), rng)[0]
    assert "axis 1 is 3 in the ONNX but the config says 2" in shape_mismatches("x", (-1, 3, -1), rng)[0]
    assert "must be dynamic in [1, 12]" in shape_mismatches("x", (-1, 2, 12), rng)[0]


# ---- precision -----------------------------------------------------------------------------
def test_precision_flags() -> None:
    assert precision_flags("fp32") == ((), ("TF32",))  # true fp32 for 1e-4 parity
    assert precision_flags(Precision.FP16).set == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert precision_flags("bf16").set == ("BF16", "OBEY_PRECISION_CONSTRAINTS")
    assert precision_flags("fp16").clear == precision_flags("bf16").clear == ()
    with pytest.raises(ValueError):
        precision_flags("int8")


@pytest.mark.parametrize(
    ("layer_type", "name", "pinned"),
    [
        # always fp32, whatever the name
        ("SOFTMAX", "node_softmax", True),
        ("NORMALIZATION", "node_layer_norm_2", True),
        ("REDUCE", "node_sum_1", True),
        ("SELECT", "node_masked_fill", True),
        ("RAGGED_SOFTMAX", "x", True),
        # element-wise: by name (decomposed LayerNorm / softmax, temperature softplus, head sigmoid)
        ("ELEMENTWISE", "/layers.0/norm1/Pow", True),
        ("UNARY", "/layers.0/norm1/Sqrt_1", True),
        ("ELEMENTWISE", "/layers.0/norm1/ReduceMean_output_0", True),
        ("UNARY", "node_Exp_12", True),
        ("ACTIVATION", "node_softplus", True),
        ("ACTIVATION", "node_sigmoid", True),
        ("ELEMENTWISE", "node_layer_norm_sub", True),
        # stays in the reduced type
        ("MATRIX_MULTIPLY", "node_softmax_matmul", False),  # matmuls are the speed, never pinned
        ("ELEMENTWISE", "node_add_12", False),
        ("ELEMENTWISE", "node_Div_72", False),
        ("UNARY", "node_Erf_73", False),  # GELU stays fp16
        ("ACTIVATION", "/ffn/Gelu", False),
        ("ELEMENTWISE", "/head/logits/Add", False),  # "logits" is not "log"
        ("SLICE", "/Expand_3", False),  # "expand" is not "exp"
        ("UNARY", "node_expand_1", False),
        ("CONSTANT", "/layers.0/norm1/Constant", False),  # a constant computes nothing
        ("CAST", "node_softmax_cast", False),
        ("GATHER", "node_embedding", False),
    ],
)
def test_keep_fp32(layer_type: str, name: str, pinned: bool) -> None:
    assert keep_fp32(layer_type, name) is pinned


def test_compute_capability_gate() -> None:
    assert min_compute_capability("bf16") == (8, 0)  # bf16 kernels need Ampere
    assert min_compute_capability("fp16") == min_compute_capability("fp32") == (7, 5)
    assert _parse_compute_capability("9.0") == (9, 0)
    assert _parse_compute_capability("[N/A]") is None
    assert _parse_compute_capability("unknown") is None


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
        fp32_layers=("node_softmax", "node_layer_norm"),
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
def test_module_imports_without_tensorrt() -> None:
    code = "import sys, export.tensorrt_engine; assert 'tensorrt' not in sys.modules, 'imported at module load'"
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
    assert "pip install .[gpu]" in message and "NVIDIA GPU" in message and "NGC" in message
    assert not (tmp_path / "model.plan").exists()


def test_check_cli_reports_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    ok, reason = tensorrt_available()
    if ok:
        pytest.skip(f"TensorRT and a GPU are present here ({reason})")
    assert main(["--check"]) == 1
    assert capsys.readouterr().out.strip() == reason
