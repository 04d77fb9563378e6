"""``python -m export`` as a user meets it: refusals before any work, one-line errors, the serve hint.

Runs everywhere. The forced-``tensorrt`` test runs the real command in a subprocess on a host
without TensorRT (skipped, with the reason, where TensorRT and a GPU are present).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.config import AstroConfig
from contract.tensors import CacheDType
from export.__main__ import ROOT, check_low_precision, main, one_line, pick_target, serve_hint
from export.onnx_graphs import GraphPaths
from export.parity import ParityError
from export.precision import convert_file
from export.repository_check import RepositoryError
from export.tensorrt_build import tensorrt_available
from export.tensorrt_versions import release, supported_releases


def run_export(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def no_tensorrt() -> str:
    ok, reason = tensorrt_available()
    if ok:
        pytest.skip(f"TensorRT and a GPU are present here ({reason}): the tensorrt target can be built")
    return reason


def test_forced_tensorrt_target_fails_before_any_work(no_tensorrt: str, tmp_path: Path) -> None:
    out, work = tmp_path / "repo", tmp_path / "work"
    done = run_export("--target", "tensorrt", "--out", str(out), "--work-dir", str(work))
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert lines[0].startswith("error: --target tensorrt cannot be built on this host: no TensorRT here"), lines
    assert "pip install '.[gpu]'" in lines[0] and len(lines[0]) < 400
    assert done.stdout == ""  # not even the "target:" line: nothing ran
    assert not out.exists() and not work.exists()


def test_tensorrt_import_fails_cleanly_without_tensorrt(no_tensorrt: str) -> None:
    """Without TensorRT, `import tensorrt` fails cleanly and the auto target falls back in one line."""
    done = subprocess.run(
        [sys.executable, "-c", "import tensorrt"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and "No module named 'tensorrt'" in done.stderr, done.stderr
    target, why = pick_target("auto")
    assert target == "python" and "\n" not in why and len(why) < 200, why


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "onnxruntime", "--triton-release", "19.01"], "error: unknown NGC Triton release '19.01'"),
        (["--target", "python", "--precision", "fp16"], "error: --precision fp16 applies to --target tensorrt only"),
        (["--target", "nonsense"], "error: unknown target 'nonsense'"),
    ],
)
def test_refused_requests_are_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([*args, "--out", str(tmp_path / "repo"), "--work-dir", str(tmp_path / "work")])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith(message), captured.err
    assert captured.out == "" and not (tmp_path / "work").exists()


def test_bad_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"not safetensors")
    (ckpt / "config.json").write_text('{"name": "x", "d_model": 63, "n_heads": 4, "unknown_key": 1}')
    rc = main(["--target", "python", "--checkpoint", str(ckpt), "--out", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and "config.json is not a valid ASTRO config" in err and "unknown_key" in err


def test_multi_line_errors_become_one_line() -> None:
    parity = ParityError(
        "ONNX Runtime disagrees with PyTorch (fp32 cache; reason):\n"
        + "\n".join(f"  scores @ B={b}: max |diff| 1e-3 > atol 1e-05" for b in range(9))
    )
    line = one_line(parity)
    assert "\n" not in line
    assert line.startswith("ONNX Runtime disagrees with PyTorch (fp32 cache; reason): scores @ B=0: max")
    assert "B=5" in line and "B=6" not in line and line.endswith("... and 3 more")
    repo = RepositoryError("/r: inconsistent model repository:\n  item_scorer: 1/model.plan is missing")
    assert one_line(repo) == "/r: inconsistent model repository: item_scorer: 1/model.plan is missing"
    assert one_line(RuntimeError("")) == "RuntimeError"


def test_serve_hint_names_what_to_do(tmp_path: Path) -> None:
    default = ROOT / "model_repository"
    assert serve_hint("python", default, None) == "Serve with `make serve`."
    other = serve_hint("python", tmp_path / "repo", None)
    assert f"python -m serve --repository {tmp_path / 'repo'}" in other and "make serve`." not in other
    newest = supported_releases()[-1]
    ort = serve_hint("onnxruntime", default, newest)
    assert f"{newest.image} tritonserver --model-repository=/models" in ort and "--gpus" not in ort
    assert "`make serve` runs the python target only" in ort
    trt = serve_hint("tensorrt", tmp_path / "repo", release("25.10"))
    assert "docker run --rm --gpus all" in trt and "nvcr.io/nvidia/tritonserver:25.10-py3" in trt
    assert "--cache-config=local,size=" in trt and "--cuda-memory-pool-byte-size=0:0" in trt  # the cache must hit
    assert f'-v "{(tmp_path / "repo").resolve()}:/models"' in trt


def test_low_precision_check_of_the_export(tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path) -> None:
    """The step `--precision fp16` runs before a TensorRT build: the converted graphs against the fp32
    graphs in ONNX Runtime; bf16 is said not to run on CPU rather than silently passing."""
    paths = tiny_graphs("fp32")
    low = (tmp_path / "user_encoder.onnx", tmp_path / "item_scorer.onnx")
    for src, dst in zip((paths.user_encoder, paths.item_scorer), low, strict=True):
        convert_file(src, dst, "fp16")
    summary = check_low_precision(paths, low, AstroConfig.from_name("tiny"), "fp16", seed=3)
    assert summary.startswith("fp16 ONNX vs fp32 ONNX (ONNX Runtime, seed 3, 3 shapes): max |diff| scores")
    assert "(tol 5e-03)" in summary
    assert "not run here" in check_low_precision(paths, low, AstroConfig.from_name("tiny"), "bf16")
