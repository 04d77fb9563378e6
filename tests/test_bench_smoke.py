"""The benchmark package: FLOP formulas against the model's real matrix products, and a
``python -m bench --quick`` run end to end. Timings are printed by the benchmark, never asserted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import perf_analyzer
from bench.__main__ import main as bench_main
from bench.__main__ import section_main
from bench.machine import NO_GPU
from bench.overload import AFTER, BEFORE
from bench.results import Results, dump, load
from bench.roofline import dense_flops, encoder_flops, path_flops, scorer_flops
from bench.timing import Stats, per_round_ratio
from bench.variants import admitted_concurrency, unbounded
from bench.workload import make_request
from contract.admission import queue_bound
from contract.config import AstroConfig
from contract.tensors import GRAPHS
from export.repository import PYTHON_INSTANCES
from model.astro import AstroModel

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "bench" / "results.json"
SECTIONS = (
    "## Machine",
    "## Headline",
    *(f"## ({s})" for s in "abcdefg"),
    "## Goals",
    "## Findings",
    "## Block attention",
)


def counted(fn: object) -> int:
    """FLOPs of the matrix products (mm, addmm, bmm, ...) torch really runs inside ``fn()``."""
    assert callable(fn)
    with FlopCounterMode(display=False) as mode:
        fn()
    return int(mode.get_total_flops())


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize(("batch", "block_len", "n"), [(1, 1, 1), (2, 5, 7), (3, 12, 40)])
def test_flop_formulas_equal_counted_matmuls(preset: str, batch: int, block_len: int, n: int) -> None:
    cfg = AstroConfig.from_name(preset)
    block_len = min(block_len, cfg.max_block_len)
    torch.manual_seed(0)
    model = AstroModel(cfg).eval()
    t = make_request(cfg, 0, batch, block_len, n).to_torch(torch.device("cpu"))
    with torch.inference_mode():
        cache = model.encode_user(t.history, t.request.scenario)
        assert counted(lambda: model.encode_user(t.history, t.request.scenario)) == encoder_flops(cfg, batch, block_len)
        scored = counted(lambda: model.score_candidates(t.candidates, t.request, t.history.timestamps, cache))
        assert scored == scorer_flops(cfg, batch, block_len, n)
        assert counted(lambda: model.sumi(t.history, t.request, t.candidates)) == dense_flops(cfg, batch, block_len, n)
        pp = path_flops(cfg, "per_pair", batch, block_len, n)
        assert counted(lambda: model.per_pair(t.history, t.request, t.candidates)) == pp


def test_per_round_ratio_pairs_rounds() -> None:
    s = per_round_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert (s.median, s.min, s.max, s.n) == (2.0, 2.0, 3.0, 3)
    t = Stats.of([float(x) for x in range(1, 102)])  # one type for spread and tail: 1..101
    assert (t.median, t.q1, t.q3, t.p95, t.p99, t.mean) == (51.0, 26.0, 76.0, 96.0, 100.0, 51.0)
    # the latency percentiles older results hold read as the same type
    old = Stats.from_dict({"p50": 2.0, "p95": 3.0, "p99": 4.0, "mean": 2.5})
    assert (old.median, old.p99, old.mean, old.n) == (2.0, 4.0, 2.5, 0)


def test_committed_results_render_every_section(tmp_path: Path) -> None:
    """The report is rendered from results.json alone (no measuring): every section of the committed run, the
    same figures the results hold, and results.json read back into the same types."""
    results = json.loads(RESULTS.read_text())
    assert bench_main(["--from-results", str(RESULTS), "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in report, heading
    level = results["served"]["levels"][0]
    assert f"{level['served']['throughput_rps']:.1f} / {level['in_process_rps']['median']:.1f}" in report
    assert f"| {results['training'][0]['device']} | " in report
    assert not (tmp_path / "results.json").exists()  # re-rendering never rewrites the results it reads
    dump(load(Results, RESULTS), tmp_path / "again.json")  # the typed results write the same figures back
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["served"]["levels"][0]["served"] == level["served"]
    split = results["turbo"][0]["speedup_vs_per_pair"]["split"]
    assert {k: again["turbo"][0]["speedup_vs_per_pair"]["split"][k] for k in split} == split


def test_locate_names_the_make_target_and_installs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """perf_analyzer missing: the bench stops at once naming `make bench-tools`; it never installs anything itself."""
    monkeypatch.delenv("ASTRO_PERF_ANALYZER", raising=False)
    monkeypatch.setattr(perf_analyzer, "PA_TARGET", tmp_path / "opt")
    with pytest.raises(perf_analyzer.ToolMissing, match="make bench-tools"):
        perf_analyzer.locate()
    assert not (tmp_path / "opt").exists()
    tool = tmp_path / "perf_analyzer"  # a binary whose libraries the loader cannot find: named with the target
    tool.write_bytes(Path("/bin/true").read_bytes())
    tool.chmod(0o755)
    monkeypatch.setenv("ASTRO_PERF_ANALYZER", str(tool))
    monkeypatch.setattr(perf_analyzer.subprocess, "run", _ldd_missing(perf_analyzer.subprocess.run))
    with pytest.raises(perf_analyzer.ToolMissing, match=r"libb64\.so\.0d: run `make bench-tools`"):
        perf_analyzer.locate()


def _ldd_missing(run: Any) -> Any:
    """subprocess.run whose ``ldd`` reports libb64.so.0d missing (other commands run as usual)."""

    def fake(cmd: list[str], **kwargs: Any) -> Any:
        if cmd[0] == "ldd":
            return subprocess.CompletedProcess(cmd, 0, "\tlibb64.so.0d => not found\n", "")
        return run(cmd, **kwargs)

    return fake


@pytest.mark.parametrize("name", ["overload", "replicas"])
def test_committed_section_pages_are_what_their_results_give(tmp_path: Path, name: str) -> None:
    """docs/bench/<name>.md is written by the section's own CLI from <name>.json through the report's template."""
    assert section_main(name, ["--from-results", str(RESULTS.parent / f"{name}.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{name}.md").read_text() == (RESULTS.parent / f"{name}.md").read_text()


@pytest.mark.server
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    rc = bench_main(["--quick", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert {(c["block_len"], c["candidates"]) for c in results["turbo"]} == {(16, 16), (16, 64)}
    for cell in results["turbo"]:
        assert cell["per_pair_method"] == "measured" and cell["device"] == "cpu"
        assert set(cell["speedup_vs_per_pair"]) == {"sumi", "split"}
    assert set(results["runtimes"][0]["seconds"]) == {"torch_eager", "ort_fp32", "ort_fp16"}
    levels = results["served"]["levels"]
    assert [(lv["cache_dtype"], lv["concurrency"]) for lv in levels] == [("fp32", 1), ("fp32", 2)]
    for lv in levels:  # perf_analyzer's figures, Triton's per-model split, the cache off in (c)
        assert lv["served"]["throughput_rps"] > 0 and lv["served"]["latency_us"]["p99"] > 0
        assert {"astro", "user_encoder", "item_scorer"} <= set(lv["server_ms_per_request"])
        assert lv["cache"] == {m: {"cache_hit": 0, "cache_miss": 0} for m in ("user_encoder", "item_scorer")}
    assert (
        results["served"]["handoff_bytes"]["fp16"]["user_keys"] * 2
        == results["served"]["handoff_bytes"]["fp32"]["user_keys"]
    )
    over = results["overload"]  # both variants at 1x and 4x the measured capacity, each level counted
    assert {(lv["variant"], lv["multiple"]) for lv in over["levels"]} == {
        (v, m) for v in (BEFORE, AFTER) for m in (1, 4)
    }
    assert over["capacity"]["rps"] > 0 and all(lv["sent"] > 0 and lv["peak_rss_mb"] > 0 for lv in over["levels"])
    ses = results["sessions"]
    assert {(r["round"], r["candidates"], r["cache"]) for r in ses["runs"]} == {(0, 64, "off"), (0, 64, "on")}
    trace = ses["traces"]["64"]
    for r in ses["runs"]:  # the whole trace, once
        assert r["requests"] == trace["requests"] and not r["wrapped"] and r["scorer_cache_activity"] == 0
    summary = ses["summary"]["64"]
    assert summary["off"]["hits"] + summary["off"]["misses"] == 0
    assert summary["on"]["hit_rate"] == pytest.approx(trace["ideal_hit_rate"], abs=0.15)
    assert summary["throughput_on_over_off"]["n"] == 1
    assert results["efficiency"] and results["matmul_flops"]["median"] > 0
    if not torch.cuda.is_available():
        assert results["gpu"]["device"] == NO_GPU and results["gpu"]["turbo"] == []
    report = (out / "report.md").read_text()
    for heading in (*SECTIONS, "## Overload", "## (h)", "### (d) per operator"):
        assert heading in report, heading
    for png in ("turbo.png", "runtimes.png", "served.png", "roofline.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert [(x["replicas"], x["lb"], x["killed"]) for x in results["replicas"]["runs"]] == [
        (1, "affinity", False), (2, "round_robin", False), (2, "affinity", False), (2, "affinity", True)
    ] and all(x["failed"] == 0 for x in results["replicas"]["runs"])  # fmt: skip


def test_served_section_runs_only_the_callers_the_exported_queues_admit(exported_repo: Path, tmp_path: Path) -> None:
    """(c)'s concurrency cap is read from the exported configs: the tightest step's instances + max_queue_size,
    as contract.admission sizes them (12 for small: item_scorer's 2 instances + 10 queued); none unbounded."""
    expected = min(b.instances + b.max_queue_size for b in (queue_bound(g, PYTHON_INSTANCES[g]) for g in GRAPHS))
    assert admitted_concurrency(exported_repo) == expected == 12
    assert admitted_concurrency(unbounded(exported_repo, tmp_path / "unbounded")) is None
