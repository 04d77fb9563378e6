"""The newcomer's and QA's path (issue 13), each fix pinned by a real run where one is feasible.

Ports already taken, training that never overwrites the default checkpoint (and its peak memory), the
stale-repository warning, the server log that outlives the server, SIGINT to the ``make serve`` process
alone, the QA parity command against the real server (passing, and failing on a planted mismatch), a
client piped into ``head``, one-line errors for a mistyped preset, docs that stand on their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from add_one_model import ADD_ONE_MODEL, write_model
from processes import stop

from contract.provenance import CHECKPOINT_FILES, PROVENANCE, checkpoint_digest, read_provenance, stale_reason
from contract.tensors import ENSEMBLE, ITEM_SCORER
from export.onnx_graphs import export_graphs
from export.provenance import write_provenance
from export.served_parity import main as parity_main
from model.astro import AstroModel
from model.checkpoint import CONFIG, DEFAULT_CHECKPOINT, WEIGHTS, load_config, save_checkpoint
from serve.server_errors import PortInUseError
from serve.server_process import group_alive
from serve.triton_server import TritonServer
from serve.triton_wheel import find_tritonserver

REPO_ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

EXAMPLE_REQUEST = {
    "history": {
        "item_ids": [11, 12, 13],
        "behaviors": [0, 1, 0],
        "scenarios": [0, 0, 2],
        "timestamps": [1699990000, 1699995000, 1699999000],
    },
    "candidates": [12, 99, 4242, *range(1000, 1020)],
    "scenario": 0,
    "timestamp": 1700000000,
}


def tiny_repo(root: Path, name: str) -> Path:
    """A one-model Python-backend repository (x + 1) that starts in seconds; ``name`` "astro" makes it
    look like an ASTRO repository to ``python -m serve`` and the Makefile."""
    write_model(root, name, ADD_ONE_MODEL)
    return root


@pytest.fixture(scope="module")
def have_triton() -> None:
    try:
        find_tritonserver()
    except Exception as exc:
        pytest.skip(f"tritonserver not available: {exc}")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on, as another server's would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run(args: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float = 120) -> list[str]:
    """stdout lines up to the one containing ``marker``; fails with everything seen otherwise."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    stop(proc)
    err = proc.stderr.read() if proc.stderr else ""
    pytest.fail(f"no {marker!r} in the output:\n{''.join(lines)}\nstderr:\n{err}")


# ---- 1. ports already taken --------------------------------------------------------------------------


def test_taken_port_is_one_line_naming_it_and_how_to_pick_another(
    tmp_path: Path, listening: int, have_triton: None
) -> None:
    repo = tiny_repo(tmp_path / "repo", "add_one")
    args = ["--repository", str(repo), "--wait-model", "add_one", "--grpc-port", str(listening)]
    started = time.monotonic()
    proc = run([PY, "-m", "serve", *args, "--http-port", "0", "--metrics-port", "0"], timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - started < 30  # refused before any model loads
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert f"port gRPC {listening} on 127.0.0.1 is already in use" in errors[0]
    assert 'SERVE_ARGS="--grpc-port' in errors[0] and "0 = any free port" in errors[0]
    assert "Triton is ready" not in proc.stdout


def test_library_refuses_a_taken_port_before_launching(tmp_path: Path, listening: int, have_triton: None) -> None:
    with TritonServer(tiny_repo(tmp_path, "add_one"), http_port=listening) as server:
        with pytest.raises(PortInUseError, match=f"port HTTP {listening} on 127.0.0.1 is already in use"):
            server.start(ready_models=["add_one"], timeout_s=60)
        assert server.pid is None  # nothing was launched


# ---- 3. training: where it writes, how much memory, a mistyped preset -------------------------------

# Peak RSS from VmHWM, the high-water mark of this process's own memory map. Not getrusage's ru_maxrss:
# Linux carries the parent's high-water mark across fork and exec into it, so a child of a 2.5 GB pytest
# reports at least 2.5 GB whatever it does itself.
TRAIN_WRAPPER = """\
import re, sys
from pathlib import Path
import model.train as train
train.DEFAULT_CHECKPOINT = Path(sys.argv[1]) / "small"  # the default --out is a sibling of this folder
sys.argv = ["python -m model.train", *sys.argv[2:]]
train.main()
print("peak_rss_kb", re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def test_training_tiny_writes_checkpoints_tiny_never_the_default(tmp_path: Path) -> None:
    """`python -m model.train --preset tiny` (no --out) writes checkpoints/tiny; checkpoints/small is untouched.
    The run is the default command at a tenth of the size; its peak RSS is printed and bounded."""
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "small").mkdir(parents=True)
    (checkpoints / "small" / "sentinel").write_text("the default checkpoint")
    real_default = checkpoint_digest(DEFAULT_CHECKPOINT)
    args = ["--preset", "tiny", "--epochs", "1", "--train-users", "64", "--test-users", "32", "--threads", "1"]
    proc = run([PY, "-c", TRAIN_WRAPPER, str(checkpoints), *args], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (checkpoints / "tiny").iterdir()} >= {CONFIG, WEIGHTS}
    assert load_config(checkpoints / "tiny").name == "tiny"
    assert [p.name for p in (checkpoints / "small").iterdir()] == ["sentinel"]
    assert checkpoint_digest(DEFAULT_CHECKPOINT) == real_default
    peak_mb = int(proc.stdout.split("peak_rss_kb")[-1]) / 1024
    print(f"peak RSS of the tiny training run: {peak_mb:.0f} MB")
    # ~0.6 GB measured; the old id array alone was 8 GB
    assert peak_mb < 1500, f"tiny training peaked at {peak_mb:.0f} MB RSS (it once took 8 GB for an 8 GB id array)"


def test_mistyped_preset_is_a_usage_error_not_a_traceback() -> None:
    proc = run([PY, "-m", "model.train", "--preset", "Tiny"], timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "invalid choice: 'Tiny'" in proc.stderr and "'tiny'" in proc.stderr


def test_make_train_takes_a_preset_and_an_output() -> None:
    def dry_run(*variables: str) -> str:
        proc = run(["make", "-n", "-o", ".venv/.installed", "train", *variables])
        assert proc.returncode == 0, proc.stderr
        (line,) = [x for x in proc.stdout.splitlines() if "-m model.train" in x]
        return " ".join(line.split()[1:])  # after the interpreter

    assert "--preset tiny" in dry_run("PRESET=tiny") and "--out" not in dry_run("PRESET=tiny")  # checkpoints/tiny
    assert dry_run("PRESET=tiny", "CHECKPOINT=/tmp/mine").endswith("--out /tmp/mine")
    assert dry_run("TRAIN_ARGS=--epochs 2").endswith("--epochs 2") and "--preset small" in dry_run()


# ---- 4. provenance: the repository knows its checkpoint; a stale one is warned about -----------------


def test_export_records_the_checkpoint_it_exported(exported_repo: Path) -> None:
    record = read_provenance(exported_repo)
    assert record is not None, f"no {PROVENANCE} in {exported_repo}"
    assert record.checkpoint == "checkpoints/small" and record.preset == "small" and record.target == "python"
    assert record.checkpoint_sha256 == checkpoint_digest(DEFAULT_CHECKPOINT)
    assert stale_reason(exported_repo) is None


def test_a_changed_checkpoint_makes_the_repository_stale(tmp_path: Path) -> None:
    checkpoint, repo = tmp_path / "ck", tmp_path / "repo"
    repo.mkdir()
    torch.manual_seed(0)
    model = AstroModel(load_config(DEFAULT_CHECKPOINT))
    save_checkpoint(model, checkpoint)
    write_provenance(repo, checkpoint, preset="small", target="python", cache_dtype="fp32", version=1)
    assert stale_reason(repo) is None

    torch.manual_seed(1)  # retrained: other weights in the same folder
    save_checkpoint(AstroModel(load_config(DEFAULT_CHECKPOINT)), checkpoint)
    reason = stale_reason(repo)
    assert reason is not None and "is stale" in reason and "serves the old model" in reason
    assert f"Re-export: python -m export --checkpoint {checkpoint} --target python --out {repo}" in reason

    for name in CHECKPOINT_FILES:
        (checkpoint / name).unlink()
    assert "no longer exists" in (stale_reason(repo) or "")
    (repo / PROVENANCE).unlink()
    assert "has no provenance.json" in (stale_reason(repo) or "")


def test_serve_warns_before_serving_a_stale_repository(tmp_path: Path, listening: int, have_triton: None) -> None:
    """`python -m serve` (what `make serve` runs) warns first; the taken port then ends the run early."""
    checkpoint, repo = tmp_path / "ck", tiny_repo(tmp_path / "repo", ENSEMBLE)
    checkpoint.mkdir()
    for name in CHECKPOINT_FILES:
        (checkpoint / name).write_text("before")
    write_provenance(repo, checkpoint, preset="small", target="python", cache_dtype="fp32", version=1)
    (checkpoint / WEIGHTS).write_text("after make train")
    proc = run([PY, "-m", "serve", "--repository", str(repo), "--grpc-port", str(listening)], timeout=60)
    warning = proc.stderr.splitlines()[0]
    assert warning.startswith("warning: ") and "is stale" in warning and "Re-export: python -m export" in warning
    assert proc.returncode == 2  # the port


# ---- 11. the log outlives the server and says the CUDA lines are harmless ----------------------------


def test_log_survives_the_stop_and_explains_cuda_lines(tmp_path: Path, have_triton: None) -> None:
    repo = tiny_repo(tmp_path / "repo", "add_one")
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(
        [PY, "-m", "serve", "--repository", str(repo), "--wait-model", "add_one", *ports],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = None
    try:
        lines = read_until(proc, "Press Ctrl-C")
        (log_line,) = [line for line in lines if line.strip().startswith("log:")]
        log = Path(log_line.split()[1])
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert f"stopped tritonserver; its log: {log}" in out
        assert log.is_file(), "the log printed at start is gone after the stop"
        text = log.read_text()
        assert "successfully loaded 'add_one'" in text
        if not Path("/proc/driver/nvidia/version").exists():
            assert "CUDA lines below are expected and harmless" in text.splitlines()[1]
            assert "harmless on this host" in log_line
    finally:
        stop(proc)
        if log is not None:
            log.unlink(missing_ok=True)


# ---- 12. SIGINT to the `make serve` process alone -----------------------------------------------------


def test_sigint_to_make_serve_alone_stops_the_server(tmp_path: Path, have_triton: None) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    repo = tiny_repo(tmp_path / "repo", ENSEMBLE)  # `make serve` checks for astro/config.pbtxt
    log = tmp_path / "server.log"
    serve_args = f"--grpc-port 0 --http-port 0 --metrics-port 0 --log-file {log}"
    proc = subprocess.Popen(
        ["make", "-o", ".venv/.installed", "serve", f"REPOSITORY={repo}", f"SERVE_ARGS={serve_args}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal: make catches SIGINT only where it was not ignored when make started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = read_until(proc, "Press Ctrl-C")
        (ready,) = [line for line in lines if line.startswith("Triton is ready")]
        server_pid = int(re.search(r"pid (\d+)", ready).group(1))  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGINT)  # make alone, not its process group
        out, err = proc.communicate(timeout=60)
        assert "stopped tritonserver" in out, err
        assert not group_alive(server_pid), "tritonserver or its stubs outlived the stop"
    finally:
        stop(proc)


# ---- 9. the QA parity command against the real server ------------------------------------------------


def test_parity_command_passes_against_the_served_export(triton: TritonServer, tmp_path: Path) -> None:
    """`make parity` with given requests and random ones: a table per output, exit 0."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(EXAMPLE_REQUEST) + "\n\n" + json.dumps({**EXAMPLE_REQUEST, "scenario": 2}) + "\n")
    parity_args = f"--url {triton.grpc_url} --requests {requests} --random 3 --seed 11 --candidates 40"
    proc = run(["make", "-s", "-o", ".venv/.installed", "parity", f"PARITY_ARGS={parity_args}"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "requests: 2 given, 3 random (seed 11; replay with --seed 11)" in out
    header = next(line for line in out.splitlines() if line.startswith("output"))
    assert header.split() == ["output", "values", "max", "|diff|", "mean", "|diff|", "tolerance", "pass"]
    for row in ("scores[play_complete]", "scores[like]", "top-10 overlap (min)"):
        (line,) = [x for x in out.splitlines() if x.startswith(row)]
        assert line.split()[-1] == "yes", out
    assert "<= 1e-05" in out and "PASS: 5 requests" in out


@pytest.fixture
def mismatched_server(exported_repo: Path, tmp_path: Path) -> Iterator[TritonServer]:
    """The export with its item_scorer replaced by a differently seeded model's: loads, serves, is wrong."""
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    torch.manual_seed(12345)
    other = AstroModel(load_config(DEFAULT_CHECKPOINT)).eval()
    graphs = export_graphs(other, tmp_path / "onnx", "fp32", progress=lambda _: None)
    shutil.copyfile(graphs.item_scorer, repo / ITEM_SCORER / "1" / "model.onnx")
    with TritonServer(repo) as server:
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        yield server


def test_parity_command_fails_nonzero_on_a_planted_mismatch(mismatched_server: TritonServer) -> None:
    args = ["--url", mismatched_server.grpc_url, "--random", "3", "--candidates", "24", "--seed", "5"]
    proc = run([PY, "-m", "export.served_parity", *args], timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("scores[")}
    assert rows == {"scores[play_complete]": "NO", "scores[like]": "NO"}, proc.stdout
    assert "FAIL: scores[play_complete]: max |diff|" in proc.stdout and "largest difference: random #" in proc.stdout


def test_parity_command_refuses_a_checkpoint_of_another_preset(
    triton: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from contract.config import AstroConfig

    save_checkpoint(AstroModel(AstroConfig.from_name("tiny")), tmp_path / "tiny")
    assert parity_main(["--url", triton.grpc_url, "--checkpoint", str(tmp_path / "tiny"), "--random", "1"]) == 2
    assert "serves preset 'small', but" in capsys.readouterr().err


# ---- 13. the client piped into `head` ----------------------------------------------------------------


def test_client_into_a_closed_pipe_exits_quietly(triton: TritonServer, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(EXAMPLE_REQUEST))
    proc = subprocess.Popen(
        [PY, "-m", "client", "score", str(request), "--url", triton.grpc_url],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the client writes, as `| head -c 1` is
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


# ---- 10. the docs stand on their own -------------------------------------------------------------------


def test_no_tracked_file_points_to_a_design_doc_that_is_not_there() -> None:
    files = run(["git", "ls-files"]).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    offenders = [
        f
        for f in files
        if f.endswith((".md", ".py", ".txt", ".toml", "Makefile"))
        and (REPO_ROOT / f).is_file()
        and "DESIGN.md" in (REPO_ROOT / f).read_text(errors="replace")
        and f != "tests/test_newcomer.py"
    ]
    assert offenders == [], f"these point to DESIGN.md, which is not in the repository: {offenders}"
