"""``python -m client``: headers, ``score`` (one request, a list, errors, the allow flags), ``health``, help on
every flag.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from client_samples import (
    NOW,
    cli_request,
    expected_scores,
    without,
)
from triton_stub import SMALL, StubTriton

from client import (
    request_from_json,
)
from client.__main__ import main, parse_header

# ---- CLI -------------------------------------------------------------------------------


def test_cli_parses_headers() -> None:
    assert parse_header("X-Api-Key=a=b") == ("x-api-key", "a=b")
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_header("novalue")


def test_cli_score_prints_scores_keyed_by_task(
    stub_server: tuple[StubTriton, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub, url = stub_server
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(cli_request())))
    assert main(["score", "--url", url, "--header", "X-Tenant=cli"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["candidates"] == [11, 12, 13] and set(out["scores"]) == {"play", "like"}
    want = expected_scores(request_from_json(cli_request()), SMALL)
    assert out["scores"]["like"] == pytest.approx(want[:, 1].tolist())
    assert stub.metadata[-1].get("x-tenant") == "cli"


def test_cli_score_list_and_errors(
    stub_server: tuple[StubTriton, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = stub_server
    f = tmp_path / "reqs.json"
    f.write_text(json.dumps([cli_request(), cli_request(candidates=[5])]))
    assert main(["score", str(f), "--url", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["candidates"] for o in out] == [[11, 12, 13], [5]]

    for bad, message in [
        (cli_request(candidates=[1, 2.5]), "candidates: element 1 is 2.5 (float)"),
        ([cli_request(), {**cli_request(), "candidate": [1]}], "requests[1]: unknown field 'candidate'"),
        (without(cli_request(), "history"), "lacks keys ['history'] (a new user"),
    ]:
        f.write_text(json.dumps(bad))
        assert main(["score", str(f), "--url", url]) == 2
        assert message in capsys.readouterr().err
    f.write_text("{not json")
    assert main(["score", str(f), "--url", url]) == 2
    assert "input: is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "flag", "message"),
    [
        ({"scenario": 9}, "--allow-unknown-ids", "scenario: value 9 is outside the served scenario ids"),
        ({"timestamp": NOW * 1000}, "--allow-any-timestamp", "timestamp: value 1700000000000"),
        ({"history": {"item_ids": [0], "behaviors": [0], "scenarios": [0], "timestamps": [NOW]}},
         "--allow-padding-items", "history.item_ids: value 0 at index 0 is the padding item id"),
    ],
)  # fmt: skip
def test_cli_allow_flags(
    stub_server: tuple[StubTriton, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    override: dict[str, Any],
    flag: str,
    message: str,
) -> None:
    _, url = stub_server
    f = tmp_path / "req.json"
    f.write_text(json.dumps(cli_request(**override)))
    assert main(["score", str(f), "--url", url]) == 2
    err = capsys.readouterr().err
    assert message in err and flag in err
    assert main(["score", str(f), "--url", url, flag]) == 0


def test_cli_health(stub_server: tuple[StubTriton, str], closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    _, url = stub_server
    assert main(["health", "--url", url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ready"] is True and report["model"] == "astro"
    served = report["served"]  # which preset, limits and vocabularies are served
    assert served["preset"] == "stub" and served["behaviors"] == list(SMALL.behaviors)
    assert served["scenarios"] == list(SMALL.scenarios) and served["max_candidates"] == SMALL.max_candidates
    assert main(["health", "--url", f"127.0.0.1:{closed_port}", "--timeout", "2"]) == 1
    assert json.loads(capsys.readouterr().out)["server_live"] is False
    assert main(["health", "--url", url, "--model", "nope"]) == 1
    capsys.readouterr()
    assert main(["health", "--url", f"{url},127.0.0.1:{closed_port}"]) == 1  # one report per address
    both = json.loads(capsys.readouterr().out)
    ready = {r["url"]: r["ready"] for r in both["replicas"]}  # replicas come sorted by address, not as given
    assert both["ready"] is False and ready == {url: True, f"127.0.0.1:{closed_port}": False}


def test_cli_help_covers_every_flag() -> None:
    from client.__main__ import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "score" in a.choices)
    for name, sub in subparsers.choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
