"""``client score`` reads JSON lines as ``make parity --requests`` does (one request per line in, one result per
line out, in order), and says on stderr that it is waiting when no server answers yet."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from client.__main__ import EXIT_USAGE
from client.__main__ import main as client_main
from client.request_lines import is_json_lines
from serve.triton_server import TritonServer

REPO = Path(__file__).resolve().parents[1]


def request(n_candidates: int, n_events: int) -> dict[str, object]:
    return {
        "history": {
            "item_ids": list(range(11, 11 + n_events)),
            "behaviors": [i % 3 for i in range(n_events)],
            "scenarios": [0] * n_events,
            "timestamps": [1699990000 + 60 * i for i in range(n_events)],
        },
        "candidates": list(range(500, 500 + n_candidates)),
        "scenario": 1,
        "timestamp": 1700000000,
    }


def test_one_document_or_json_lines() -> None:
    one = json.dumps(request(3, 2), indent=2)  # a pretty-printed object spans lines: still one document
    assert not is_json_lines(one) and not is_json_lines(json.dumps([request(1, 0), request(2, 1)]))
    assert is_json_lines(json.dumps(request(3, 2)) + "\n" + json.dumps(request(1, 0)) + "\n")
    assert not is_json_lines("{not json")  # an error, reported as the one document's


@pytest.mark.server
def test_score_answers_json_lines_one_result_per_line_in_order(
    triton: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = [request(5, 3), request(1, 0), request(40, 9)]
    lines = tmp_path / "requests.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in requests[:2]) + "\n\n" + json.dumps(requests[2]) + "\n")
    assert client_main(["score", "--url", triton.grpc_url, str(lines)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(requests), out
    for i, (line, req) in enumerate(zip(out, requests, strict=True)):
        alone = tmp_path / f"alone{i}.json"
        alone.write_text(json.dumps(req, indent=2))
        assert client_main(["score", "--url", triton.grpc_url, str(alone)]) == 0
        assert json.loads(line) == json.loads(capsys.readouterr().out), f"line {i + 1}"

    lines.write_text(json.dumps(requests[0]) + "\n" + '{"history": {}, "candidates": [1]\n')
    assert client_main(["score", "--url", triton.grpc_url, str(lines)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {lines}:2: is not one JSON request per line"), err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("no_wait", [False, True])
def test_score_says_it_waits_for_a_server_that_does_not_answer(no_wait: bool) -> None:
    url = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "client", "score", "--url", url, "--timeout", "1", *(["--no-wait"] * no_wait)]
    done = subprocess.run(
        cmd, input=json.dumps(request(2, 1)), capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    lines = done.stderr.splitlines()
    assert done.returncode not in (0, EXIT_USAGE) and lines and lines[-1].startswith("error: "), done.stderr
    waiting = f"waiting for the server at {url} (up to 1 s; --no-wait fails at once)"
    assert (lines[0] == waiting) != no_wait, done.stderr
    assert done.stdout == ""
