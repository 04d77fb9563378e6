"""ONNX export, ONNX Runtime parity, repository generation for all targets, and bad export input."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contract.config import AstroConfig
from contract.serving_spec import ServingSpec
from contract.tensors import CACHE_TENSORS, ENSEMBLE, ITEM_SCORER, SCORES_OUTPUT, USER_ENCODER, CacheDType
from export.__main__ import main as export_main
from export.onnx_graphs import OPSET, GraphPaths, check_graph, export_graphs
from export.parity import (
    TOLERANCES,
    OrtPipeline,
    ParityError,
    Shape,
    check_ort_parity,
    shape_grid,
    torch_split,
)
from export.repository import TARGETS, composing_config, ensemble_config, write_repository
from export.repository_check import RepositoryError, check_repository, wiring_errors
from model.astro import AstroModel
from model.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from model.random_inputs import random_request
from serve.triton_server import TritonServer


def random_grid(cfg: AstroConfig, rng: np.random.Generator, count: int) -> list[Shape]:
    """Fresh random shapes on top of the fixed corner grid."""
    return [
        Shape(
            int(rng.integers(1, cfg.max_batch_size + 1)),
            int(rng.integers(1, cfg.max_block_len + 1)),
            int(rng.integers(1, cfg.max_candidates + 1)),
            int(rng.integers(0, 2)),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("cache_dtype", ["fp32", "fp16"])
def test_graphs_are_valid_onnx(tiny_graphs: Callable[[CacheDType], GraphPaths], cache_dtype: CacheDType) -> None:
    paths = tiny_graphs(cache_dtype)
    for path in (paths.user_encoder, paths.item_scorer):
        proto = check_graph(path)
        assert any(op.domain in ("", "ai.onnx") and op.version >= OPSET for op in proto.opset_import)
    enc = onnx.load(str(paths.user_encoder)).graph
    kv_type = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16}[cache_dtype]
    assert [o.name for o in enc.output] == ["user_keys", "user_values", "user_mask"]
    assert enc.output[0].type.tensor_type.elem_type == kv_type
    dims = [d.dim_param or d.dim_value for d in enc.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and isinstance(dims[0], str) and isinstance(dims[2], str), dims  # [batch, Nb, block_len]


@pytest.mark.parametrize("cache_dtype", ["fp32", "fp16"])
def test_ort_matches_pytorch_over_shapes(
    tiny_model: AstroModel, tiny_graphs: Callable[[CacheDType], GraphPaths], cache_dtype: CacheDType, seed: int
) -> None:
    """Tolerances per cache dtype, with their reasons, live in export.parity.TOLERANCES. Fresh shapes and
    inputs every run, all from ``seed``."""
    rng = np.random.default_rng(seed)
    shapes = shape_grid(tiny_model.cfg) + random_grid(tiny_model.cfg, rng, 6)
    report = check_ort_parity(tiny_model, tiny_graphs(cache_dtype), cache_dtype, shapes, seed, progress=lambda _: None)
    assert report.shapes == len(shapes)
    assert report.max_abs["scores"] <= TOLERANCES[cache_dtype].atol, f"seed {seed}"


def test_trained_model_fp16_cache_keeps_rankings(small_model: AstroModel, tmp_path: Path) -> None:
    """On the trained model, the fp16 cache keeps each user's top-10 candidates, near-ties aside."""
    paths = export_graphs(small_model, tmp_path, "fp16", progress=lambda _: None)
    shapes = [Shape(4, 64, 200, 1), Shape(2, small_model.cfg.max_block_len, 500)]
    report = check_ort_parity(small_model, paths, "fp16", shapes, seed=7, progress=lambda _: None)
    # it raises on a top-10 intruder or a difference over tolerance; that it ran: every shape, the cache handed
    # from the encoder to the scorer compared too, and the scores within the fp16 tolerance
    assert report.shapes == len(shapes)
    assert set(report.max_abs) == {*CACHE_TENSORS, SCORES_OUTPUT}, report.summary()
    assert report.max_abs[SCORES_OUTPUT] <= TOLERANCES["fp16"].atol, report.summary()


def test_parity_check_can_fail(
    tiny_model: AstroModel, tiny_graphs: Callable[[CacheDType], GraphPaths], seed: int
) -> None:
    """A model whose weights drifted from the exported graph is caught, naming the tensor."""
    other = AstroModel(tiny_model.cfg).eval()  # initialised from ``seed`` (the fixture seeds torch)
    with pytest.raises(ParityError, match="scores @ B=1 Tb=1 N=1"):
        check_ort_parity(other, tiny_graphs("fp32"), "fp32", [Shape(1, 1, 1)], seed=seed, progress=lambda _: None)


def test_ort_scores_are_finite_for_empty_history(
    tiny_model: AstroModel, tiny_graphs: Callable[[CacheDType], GraphPaths]
) -> None:
    req = random_request(tiny_model.cfg, np.random.default_rng(1), 3, 1, 5, empty_users=3)
    pipe = OrtPipeline(tiny_graphs("fp32"))
    scores = pipe.score(req, pipe.encode(req))
    _, ref = torch_split(tiny_model, req, "fp32")
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(scores, ref, atol=TOLERANCES["fp32"].atol)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cache_dtype", ["fp32", "fp16"])
def test_generated_configs_parse_and_wire(target: str, cache_dtype: str) -> None:
    cfg = AstroConfig.from_name("small")
    configs = {
        USER_ENCODER: composing_config(cfg, USER_ENCODER, target, cache_dtype, threads=2),
        ITEM_SCORER: composing_config(cfg, ITEM_SCORER, target, cache_dtype, threads=2),
        ENSEMBLE: ensemble_config(cfg, cache_dtype),
    }
    parsed = {k: text_format.Parse(text_format.MessageToString(v), mc.ModelConfig()) for k, v in configs.items()}
    assert wiring_errors(parsed) == []
    ens = parsed[ENSEMBLE]
    assert ens.platform == "ensemble" and ens.max_batch_size == cfg.max_batch_size
    assert [t.name for t in ens.input] == [
        "hist_item_ids", "hist_behaviors", "hist_scenarios", "hist_timestamps",
        "request_scenario", "request_timestamp", "cand_item_ids",
    ]  # fmt: skip
    assert all(t.data_type == mc.TYPE_INT64 for t in ens.input)
    assert list(ens.input[0].dims) == [cfg.n_blocks, -1] and list(ens.input[6].dims) == [-1]
    assert [(t.name, t.data_type, list(t.dims)) for t in ens.output] == [("scores", mc.TYPE_FP32, [-1, cfg.n_tasks])]
    params = {k: v.string_value for k, v in ens.parameters.items()}
    assert ServingSpec.from_parameters(params) == ServingSpec.from_config(cfg)
    for name in (USER_ENCODER, ITEM_SCORER):
        sub = parsed[name]
        assert sub.max_batch_size == cfg.max_batch_size and sub.dynamic_batching is not None
        assert len(sub.model_warmup) == 1
        expected = {
            "tensorrt": ("tensorrt_plan", ""),
            "onnxruntime": ("onnxruntime_onnx", ""),
            "python": ("", "python"),
        }
        assert (sub.platform, sub.backend) == expected[target]
    kv = next(t for t in parsed[USER_ENCODER].output if t.name == "user_keys")
    assert kv.data_type == (mc.TYPE_FP16 if cache_dtype == "fp16" else mc.TYPE_FP32)
    assert list(kv.dims) == [cfg.n_layers, cfg.n_heads, -1, cfg.head_dim]


def test_ensemble_config_is_identical_across_targets(
    tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path
) -> None:
    """The written ensemble config.pbtxt does not depend on the target (ensemble_config takes none);
    the composing models' do."""
    cfg = AstroConfig.from_name("tiny")
    paths = tiny_graphs("fp32")
    files = {USER_ENCODER: paths.user_encoder, ITEM_SCORER: paths.item_scorer}
    for target in ("python", "onnxruntime"):
        write_repository(tmp_path / target, cfg, target, files, "fp32", progress=lambda _: None)
    ensembles = {(tmp_path / t / ENSEMBLE / "config.pbtxt").read_text() for t in ("python", "onnxruntime")}
    composing = {(tmp_path / t / USER_ENCODER / "config.pbtxt").read_text() for t in ("python", "onnxruntime")}
    assert len(ensembles) == 1 and len(composing) == 2


def test_wiring_check_catches_mismatch() -> None:
    cfg = AstroConfig.from_name("tiny")
    configs = {
        USER_ENCODER: composing_config(cfg, USER_ENCODER, "python", "fp16", 1),
        ITEM_SCORER: composing_config(cfg, ITEM_SCORER, "python", "fp32", 1),  # cache dtype disagrees
        ENSEMBLE: ensemble_config(cfg, "fp32"),
    }
    errors = wiring_errors(configs)
    assert any("user_keys" in e and "TYPE_FP16" in e for e in errors), errors


def test_repository_on_disk_is_complete(tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path) -> None:
    cfg = AstroConfig.from_name("tiny")
    paths = tiny_graphs("fp32")
    files = {USER_ENCODER: paths.user_encoder, ITEM_SCORER: paths.item_scorer}
    for target in ("python", "onnxruntime"):
        root = tmp_path / target
        write_repository(root, cfg, target, files, "fp32", progress=lambda _: None)
        configs = check_repository(root)
        assert set(configs) == {ENSEMBLE, USER_ENCODER, ITEM_SCORER}
        assert (root / USER_ENCODER / "1" / "model.onnx").is_file()
        assert (root / ENSEMBLE / "1" / ".keep").is_file()  # an object store keeps no empty folder
        assert ((root / ITEM_SCORER / "1" / "model.py").is_file()) == (target == "python")
    (tmp_path / "python" / USER_ENCODER / "1" / "model.onnx").unlink()  # model.py alone is not enough
    with pytest.raises(RepositoryError, match=r"user_encoder: 1/model.onnx is missing"):
        check_repository(tmp_path / "python")
    shutil.rmtree(tmp_path / "python" / ITEM_SCORER / "1")
    with pytest.raises(RepositoryError, match="item_scorer: no version directory"):
        check_repository(tmp_path / "python")


def test_reexport_leaves_identical_configs_untouched(
    tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path
) -> None:
    """A re-export beside a running server must not touch an unchanged config.pbtxt (docs/reliability.md: a
    touched ensemble config makes Triton reload it and drop requests); a changed one is rewritten."""
    cfg = AstroConfig.from_name("tiny")
    paths = tiny_graphs("fp32")
    files = {USER_ENCODER: paths.user_encoder, ITEM_SCORER: paths.item_scorer}
    configs = write_repository(tmp_path, cfg, "python", files, "fp32", progress=lambda _: None)
    past = 1_000_000_000 * 10**9  # 2001: any write moves the mtime to now
    for path in configs:
        os.utime(path, ns=(past, past))
    write_repository(tmp_path, cfg, "python", files, "fp32", progress=lambda _: None)
    assert {p.name: p.stat().st_mtime_ns for p in configs} == {p.name: past for p in configs}, "rewritten"
    write_repository(tmp_path, cfg, "python", files, "fp32", threads=3, progress=lambda _: None)
    changed = [p.parent.name for p in configs if p.stat().st_mtime_ns != past]
    assert changed == [USER_ENCODER, ITEM_SCORER]  # the thread count lives in the composing configs only


def test_export_cli_produces_a_checked_repository(exported_repo: Path) -> None:
    configs = check_repository(exported_repo)
    params = {k: v.string_value for k, v in configs[ENSEMBLE].parameters.items()}
    assert params["preset"] == "small" and configs[USER_ENCODER].backend == "python"
    assert (exported_repo / USER_ENCODER / "1" / "model.py").is_file()


@pytest.mark.server
def test_exported_repository_loads_in_real_triton(triton: TritonServer) -> None:
    """Smoke-load: the fixture raises with the server's log unless every model became ready."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for name in (ENSEMBLE, USER_ENCODER, ITEM_SCORER):
        assert client.is_model_ready(name), name


def test_missing_checkpoint_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = export_main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "repo")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "python -m model.train" in err


def test_unknown_target_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = export_main(["--target", "tflite", "--out", str(tmp_path / "repo")])
    assert rc == 2
    assert "unknown target 'tflite'" in capsys.readouterr().err


def test_config_checkpoint_mismatch_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int) -> None:
    ck = tmp_path / "ck"
    save_checkpoint(AstroModel(AstroConfig.from_name("tiny")), ck)  # initialised from ``seed``
    small_json = (DEFAULT_CHECKPOINT / "config.json").read_text()
    (ck / "config.json").write_text(small_json)  # weights are tiny, config says small
    rc = export_main(["--checkpoint", str(ck), "--target", "python", "--out", str(tmp_path / "repo")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "shape mismatches" in err
