"""Shared fixtures: models, exported graphs, a freshly exported repository and the real server.

Heavy fixtures are session-scoped and built once: the export runs the real
``python -m export`` code path, and the server is the real ``tritonserver`` binary
from the ``nvidia-pytriton`` wheel on a free loopback port.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from triton_stub import StubTriton, refused_port, serve_stub

from contract.config import AstroConfig
from contract.tensors import ENSEMBLE, CacheDType
from export.__main__ import main as export_main
from export.onnx_graphs import GraphPaths, export_graphs
from model.astro import AstroModel
from model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from serve.triton_server import TritonServer

SEED_ENV = "ASTRO_TEST_SEED"


@pytest.fixture
def seed() -> int:
    """A fresh seed for each random test, or ``$ASTRO_TEST_SEED`` to replay one; printed, so pytest shows it
    with a failure. It seeds numpy (pass it to a Generator) and torch's global generator (model init)."""
    value = int(os.environ.get(SEED_ENV) or secrets.randbelow(2**31))
    print(f"seed {value} (replay: {SEED_ENV}={value} pytest ...)")
    torch.manual_seed(value)
    return value


@pytest.fixture(scope="session")
def tiny_model() -> AstroModel:
    torch.manual_seed(0)
    return AstroModel(AstroConfig.from_name("tiny")).eval()


@pytest.fixture(scope="session")
def small_model() -> AstroModel:
    """The embedded, trained default checkpoint (committed in checkpoints/small)."""
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="session")
def tiny_graphs(tiny_model: AstroModel, tmp_path_factory: pytest.TempPathFactory) -> Callable[[CacheDType], GraphPaths]:
    """ONNX graphs of the tiny model per cache dtype, exported once each."""
    done: dict[str, GraphPaths] = {}

    def get(cache_dtype: CacheDType) -> GraphPaths:
        if cache_dtype not in done:
            done[cache_dtype] = export_graphs(
                tiny_model, tmp_path_factory.mktemp(f"onnx-{cache_dtype}"), cache_dtype, progress=lambda _: None
            )
        return done[cache_dtype]

    return get


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m export --target python` of the default checkpoint into a fresh folder."""
    root = tmp_path_factory.mktemp("export")
    rc = export_main(["--target", "python", "--out", str(root / "repo"), "--work-dir", str(root / "artifacts")])
    assert rc == 0, f"python -m export exited {rc}"
    return root / "repo"


@pytest.fixture(scope="session")
def triton(exported_repo: Path) -> Iterator[TritonServer]:
    """The real tritonserver serving the freshly exported repository on a free loopback port."""
    with TritonServer(exported_repo) as server:
        server.start(ready_models=[ENSEMBLE], timeout_s=180)
        yield server


@pytest.fixture
def stub_server() -> Iterator[tuple[StubTriton, str]]:
    """A stub Triton of the small spec on a free port (tests/triton_stub.py): the client's wire without a model."""
    yield from serve_stub()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    yield from refused_port()
