"""The served model says what it is: the ensemble publishes the export's provenance (checkpoint sha256, export
time, toolchain, target container), ``client health`` prints it, and ``make parity`` refuses a checkpoint
whose sha256 differs from the served one, in one line with exit 2 naming both hashes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import tritonclient.grpc as grpcclient

from client.__main__ import main as client_main
from contract.provenance import PROVENANCE_PARAMETERS, Provenance, checkpoint_digest, read_provenance
from contract.tensors import ENSEMBLE
from export.provenance import new_provenance, save_provenance
from export.served_parity import EXIT_USAGE
from export.served_parity import main as parity_main
from model.astro import AstroModel
from model.checkpoint import DEFAULT_CHECKPOINT, load_config, save_checkpoint
from serve.triton_server import TritonServer


@pytest.mark.server
def test_the_ensemble_publishes_the_export_it_serves(triton: TritonServer, exported_repo: Path) -> None:
    record = read_provenance(exported_repo)
    assert record is not None
    config = grpcclient.InferenceServerClient(triton.grpc_url).get_model_config(ENSEMBLE, as_json=True)
    params = {k: v["string_value"] for k, v in config["config"]["parameters"].items()}
    assert {k: params.get(k) for k in PROVENANCE_PARAMETERS} == record.parameters()
    assert params["checkpoint_sha256"] == checkpoint_digest(DEFAULT_CHECKPOINT)
    assert (params["preset"], params["cache_dtype"]) == ("small", "fp32")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", params["exported_at"]), params["exported_at"]
    for tool in (torch.__version__, "onnx ", "onnxruntime "):
        assert tool in params["toolchain"], params["toolchain"]
    assert params["target_container"].startswith("tritonserver from nvidia-pytriton "), params["target_container"]


@pytest.mark.server
def test_client_health_prints_the_served_provenance(
    triton: TritonServer, exported_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client_main(["health", "--url", triton.grpc_url]) == 0
    report = json.loads(capsys.readouterr().out)
    record = read_provenance(exported_repo)
    assert record is not None and report["provenance"] == record.parameters()


@pytest.mark.server
def test_parity_refuses_another_checkpoint_of_the_same_preset(
    triton: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same preset, same shapes, other weights: refused before any request, naming both hashes."""
    other = tmp_path / "small-retrained"
    torch.manual_seed(1)
    save_checkpoint(AstroModel(load_config(DEFAULT_CHECKPOINT)).eval(), other)
    served, local = checkpoint_digest(DEFAULT_CHECKPOINT), checkpoint_digest(other)
    assert served != local and load_config(other).name == load_config(DEFAULT_CHECKPOINT).name

    rc = parity_main(["--url", triton.grpc_url, "--checkpoint", str(other), "--random", "1", "--seed", "0"])
    captured = capsys.readouterr()
    assert rc == EXIT_USAGE == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert f"serves checkpoint sha256 {served}" in lines[0] and f"is sha256 {local}" in lines[0], lines[0]
    assert captured.out == "", "nothing compared: no table, no request sent"


def test_a_reexport_of_the_same_thing_keeps_its_record(tmp_path: Path) -> None:
    """Same checkpoint, target and toolchain: the first export's time stays, so the ensemble config (which
    carries it) is byte-identical and a server watching the repository does not reload it; any change is a
    new record."""
    repo = tmp_path / "repo"
    repo.mkdir()

    def export(cache_dtype: str = "fp32") -> Provenance:
        return new_provenance(
            repo, DEFAULT_CHECKPOINT, preset="small", target="python", cache_dtype=cache_dtype, version=1
        )

    first = export()
    assert first.toolchain and first.checkpoint_sha256 == checkpoint_digest(DEFAULT_CHECKPOINT)
    save_provenance(repo, dataclasses.replace(first, exported_at="2001-01-01T00:00:00Z"))
    assert export() == dataclasses.replace(first, exported_at="2001-01-01T00:00:00Z")
    assert export("fp16").exported_at != "2001-01-01T00:00:00Z"
