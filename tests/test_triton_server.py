"""The real ``tritonserver`` from the nvidia-pytriton wheel, driven by ``serve.triton_server`` and ``python -m serve``.

Every test that starts a server writes its own tiny Python-backend model repository into ``tmp_path``; nothing
here depends on the exported ASTRO model.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from add_one_model import ADD_ONE_MODEL, write_model
from processes import stop
from server_helpers import triton_infer, write_served_repository

from contract.config import AstroConfig
from contract.tensors import CacheDType
from export.onnx_graphs import GraphPaths
from serve import triton_server
from serve.__main__ import main as serve_main
from serve.ports import free_port, free_ports
from serve.server_errors import TritonNotFoundError, TritonServerError
from serve.server_process import group_alive
from serve.triton_server import TritonServer, iter_models
from serve.triton_wheel import TritonInstall, find_tritonserver

REPO_ROOT = Path(__file__).resolve().parents[1]

BROKEN_MODULE = "no_such_module_for_astro_serving_test"
BROKEN_MODEL = f"""\
import {BROKEN_MODULE}


class TritonPythonModel:
    def execute(self, requests):
        return []
"""


@pytest.fixture(scope="module")
def triton_install() -> TritonInstall:
    try:
        return find_tritonserver()
    except TritonNotFoundError as exc:
        pytest.skip(f"tritonserver not available: {exc}")


@pytest.fixture(scope="module")
def grpcclient(triton_install: TritonInstall) -> Any:
    return pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is needed to talk to the server")


@pytest.fixture
def add_one_repo(tmp_path: Path) -> Path:
    repository = tmp_path / "repository"
    write_model(repository, "add_one", ADD_ONE_MODEL)
    return repository


@pytest.fixture
def server(add_one_repo: Path, tmp_path: Path, triton_install: TritonInstall) -> Iterator[TritonServer]:
    with TritonServer(add_one_repo, log_file=tmp_path / "tritonserver.log") as srv:
        srv.start(ready_models=["add_one"], timeout_s=60)
        yield srv


def add_one(url: str, x: np.ndarray) -> np.ndarray:
    return triton_infer(url, {"INPUT0": x}, "add_one")["OUTPUT0"]


def test_free_port_is_bindable() -> None:
    port = free_port("127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_group_of_zombies_counts_as_gone() -> None:
    """A killed child nobody reaps stays a zombie in its group (as stubs do under a PID 1 that never reaps):
    the kernel still finds the group, but nothing in it runs."""
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert group_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(child.pid), "a killed process still counted as running"
        os.killpg(child.pid, 0)  # not reaped yet: the zombie is still in its group
    finally:
        child.kill()
        child.wait()


def test_iter_models(add_one_repo: Path, tmp_path: Path) -> None:
    assert iter_models(add_one_repo) == ["add_one"]
    assert iter_models(tmp_path / "missing") == []


@pytest.mark.server
def test_find_tritonserver(triton_install: TritonInstall, tmp_path: Path) -> None:
    assert os.access(triton_install.binary, os.X_OK)
    assert triton_install.python_stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    backend = triton_install.build_backend_dir(tmp_path / "backends")
    names = {p.name for p in (backend / "python").iterdir()}
    assert names == {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"}
    env = triton_install.environment({"PATH": "/usr/bin"})
    assert str(triton_install.libs_dir) in env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert env["PATH"].split(os.pathsep)[0] == str(triton_install.python_bin_dir)


@pytest.mark.server
def test_a_rebuilt_backend_replaces_a_stub_that_still_runs(triton_install: TritonInstall, tmp_path: Path) -> None:
    """A relaunch in the same workdir rebuilds the backend directory while a previous launch's stub may still
    run from it: writing into a running executable fails with "Text file busy", so each file is copied beside
    and renamed over (the running process keeps the old file)."""
    stub = triton_install.build_backend_dir(tmp_path / "backends") / "python" / "triton_python_backend_stub"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", stub)  # an executable that stays running
    running = subprocess.Popen([str(stub), "60"])
    try:
        triton_install.build_backend_dir(tmp_path / "backends")
        assert stub.read_bytes() == triton_install.python_stub.read_bytes()
        assert running.poll() is None
    finally:
        running.kill()
        running.wait()


@pytest.mark.server
def test_serves_add_one_over_grpc_then_stops(server: TritonServer, grpcclient: Any) -> None:
    assert server.is_running() and server.pid is not None
    assert server.grpc_url == f"127.0.0.1:{server.grpc_port}"

    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    y = add_one(server.grpc_url, x)
    assert y.dtype == np.float32 and y.shape == (3, 5)
    np.testing.assert_array_equal(y, x + np.float32(1))

    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        assert 'nv_inference_request_success{model="add_one"' in resp.read().decode()
    assert "successfully loaded 'add_one'" in server.log_text()

    assert server.stop(timeout_s=30) == 0
    assert not server.is_running()


@pytest.mark.server
def test_a_server_handed_anothers_ports_never_takes_its_answers_for_its_own(
    server: TritonServer, add_one_repo: Path, grpcclient: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free ports are picked, released, then bound by tritonserver: two servers started together can draw the
    same ones. The loser exits on "already in use" and retries on fresh ports; until it logs that it listens,
    the other server's answers on that port must not count as its readiness."""
    taken = [server.grpc_port, server.http_port, server.metrics_port]
    picks = iter([taken])  # the first pick clashes with the running server; later picks are free
    monkeypatch.setattr(triton_server, "free_ports", lambda count, host: next(picks, None) or free_ports(count, host))
    with TritonServer(add_one_repo) as late:
        assert late.grpc_port == server.grpc_port
        late.start(ready_models=["add_one"], timeout_s=60)
        assert late.grpc_port not in taken and late.is_running(), "start() returned on the other server's answers"
        x = np.ones((1, 3), dtype=np.float32)
        np.testing.assert_array_equal(add_one(late.grpc_url, x), x + 1)


@pytest.mark.server
def test_kill_makes_server_unavailable(server: TritonServer, grpcclient: Any) -> None:
    x = np.zeros((1, 2), dtype=np.float32)
    np.testing.assert_array_equal(add_one(server.grpc_url, x), x + 1)
    pid = server.pid
    assert pid is not None

    assert server.kill() == -signal.SIGKILL
    assert not server.is_running()
    assert not group_alive(pid)  # the whole group is gone, Python backend stubs included
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException):
            client.is_server_live(client_timeout=2.0)
    finally:
        client.close()


@pytest.mark.server
def test_broken_model_reports_the_load_error(add_one_repo: Path, triton_install: TritonInstall) -> None:
    broken_dir = write_model(add_one_repo, "broken", BROKEN_MODEL)
    with TritonServer(add_one_repo) as srv:
        with pytest.raises(TritonServerError) as info:
            srv.start(ready_models=["add_one", "broken"], timeout_s=60)
        assert not srv.is_running()
    message = str(info.value)
    assert f"No module named '{BROKEN_MODULE}'" in message
    assert str(broken_dir / "1" / "model.py") in message  # the file that failed is named
    assert "failed to load 'broken'" in message


@pytest.mark.server
def test_unknown_ready_model_fails_fast(add_one_repo: Path, triton_install: TritonInstall) -> None:
    with TritonServer(add_one_repo, model_control_mode="explicit", load_models=["add_one"]) as srv:
        started = time.monotonic()
        with pytest.raises(TritonServerError, match="no such model"):
            srv.start(ready_models=["add_one", "not_there"], timeout_s=60)
        assert time.monotonic() - started < 30
        assert not srv.is_running()


def run_cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "serve", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_cli_without_models_says_make_export(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli("--repository", str(tmp_path / "empty"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "make export" in err


@pytest.mark.server
def test_cli_serves_until_sigterm(add_one_repo: Path, grpcclient: Any) -> None:
    proc = run_cli(
        "--repository", str(add_one_repo), "--wait-model", "add_one",
        "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        grpc_url = None
        deadline = time.monotonic() + 60
        lines = []
        while grpc_url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("gRPC:"):
                grpc_url = line.split()[-1]
        assert grpc_url is not None, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        np.testing.assert_array_equal(add_one(grpc_url, x), x + 1)

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped tritonserver" in out
    finally:
        stop(proc)  # SIGTERM first: the CLI then stops its tritonserver (own process group)


def test_cli_refuses_a_repository_for_another_backend(
    tiny_graphs: Callable[[CacheDType], GraphPaths], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make serve` on a repository exported for the NGC container says so instead of failing inside Triton."""
    write_served_repository(tmp_path, AstroConfig.from_name("tiny"), tiny_graphs("fp32"), "onnxruntime")
    assert serve_main(["--repository", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "user_encoder (onnxruntime_onnx)" in err and "--target python" in err
