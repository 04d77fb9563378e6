"""The report: typed results (:mod:`bench.results`) through the Markdown templates in ``bench/templates/``.

Every number comes from ``results.json``; the templates hold the prose and the tables, this module the
verdicts (goals, flags) computed from the results, and the few filters that format a figure.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2

from bench import op_profile, overload, replicas, roofline, sessions
from bench.goal import Goal
from bench.results import Results
from bench.served import ServedLevel
from bench.timing import Stats
from contract.tensors import ITEM_SCORER, USER_ENCODER

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = ROOT / "docs" / "bench" / "findings.md"  # the investigation's record, quoted in the report
GOAL_SERVED_RATIO, GOAL_CONCURRENCY = 0.8, 4  # issue 11: served / in-process throughput at concurrency >= this
GOAL_HIT_RATE, GOAL_CACHE_SPEEDUP = 0.7, 1.3  # issue 11: session traffic, k = 4
EFFICIENCY_FLAG = 0.10  # a stage below this fraction of the matmul limit is "far from its limit"
# Issue 22's goals for the exported graphs and the served path
SCORER_GOAL, SCORER_GOAL_MIN_N = 0.60, 256  # ONNX Runtime scorer: share of the matmul limit at N >= this
ENCODER_GOAL, ENCODER_GOAL_TB = 0.25, 48  # ONNX Runtime encoder: share of the limit at this Tb
RUNTIME_GOAL, RUNTIME_GOAL_N = 1.5, 1024  # ONNX Runtime (fp32 cache) vs PyTorch eager, encoder + scorer, at this N
SERVED_GOAL, SERVED_GOAL_MIN_CONCURRENCY = 0.85, 2  # served / in-process throughput, as exported
GOAL_RUNTIME = "ort_fp32"
TOP_OPS = 8  # (d) per operator: operator types listed per graph; the rest are summed in one row


def ratio(s: Stats, unit: str = "x") -> str:
    return f"{s.median:.2f}{unit} [{s.q1:.2f}–{s.q3:.2f}] ({s.min:.2f}–{s.max:.2f})"


def ms(s: Stats) -> str:
    return f"{1e3 * s.median:.3g} [{1e3 * s.q1:.3g}–{1e3 * s.q3:.3g}]"


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def span(fractions: list[float]) -> str:
    lo, hi = 100 * min(fractions), 100 * max(fractions)
    return f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}%–{hi:.0f}%"


def doc(module: ModuleType) -> str:
    """A module's docstring after its first paragraph: the method the section's report quotes."""
    return (module.__doc__ or "").split("\n\n", 1)[1].strip()


def served_cpu_ms(lv: ServedLevel) -> float:
    """CPU ms per request of the served side: load client, tritonserver and its stubs (all but in-process)."""
    return sum(v for k, v in lv.cpu_ms_per_request.items() if k != "in_process")


def served_cause(lv: ServedLevel) -> str:
    """Why a served level falls short of in-process: the item_scorer stage's rate, and the CPU per request."""
    scorer = lv.server_ms_per_request.get(ITEM_SCORER, {})
    per_exec, rpe = scorer.get("compute_infer", 0.0), lv.requests_per_execution.get(ITEM_SCORER, 1.0)
    cpu = lv.cpu_ms_per_request
    served_cpu = served_cpu_ms(lv)
    cap = f"{1e3 * rpe / per_exec:.0f}" if per_exec > 0 else "?"
    return (
        f" Missed at {lv.cache_dtype} c={lv.concurrency}: the item_scorer stage sets the served rate: its "
        f"instance(s) took {per_exec:.1f} ms per execution of {rpe:.1f} requests, at most {cap} req/s per "
        f"instance (served {lv.served.throughput_rps:.0f}), while in-process ONNX Runtime runs encoder and "
        f"scorer on every core ({lv.in_process_rps.median:.0f} req/s); the served path also spends "
        f"{served_cpu:.2f} CPU ms per request (perf_analyzer {cpu.get('client', 0):.2f}, tritonserver "
        f"{cpu.get('tritonserver', 0):.2f}, stubs {cpu.get('backend_stubs', 0):.2f}) against "
        f"{cpu['in_process']:.2f} in-process."
    )


def served_goals(r: Results) -> list[Goal]:
    out = []
    for config, all_levels in [(r.served.config, r.served.levels), *((v.config, v.levels) for v in r.served.variants)]:
        levels = [lv for lv in all_levels if lv.concurrency >= GOAL_CONCURRENCY]
        if not levels:
            continue
        worst = min(levels, key=lambda lv: lv.throughput_ratio.median)
        met = all(lv.throughput_ratio.median >= GOAL_SERVED_RATIO for lv in levels)
        figures = ", ".join(f"{lv.cache_dtype} c={lv.concurrency}: {lv.throughput_ratio.median:.2f}" for lv in levels)
        goal = f"served / in-process throughput >= {GOAL_SERVED_RATIO} at concurrency >= {GOAL_CONCURRENCY}"
        goal += " (perf_analyzer)"
        out.append(Goal(config, goal, met, f"median ratios {figures}.{'' if met else served_cause(worst)}"))
    return out


def session_goals(r: Results) -> list[Goal]:
    out = []
    for ses in r.all_sessions:
        for n, sm in ses.summary.items():
            on, off, speedup = sm.on, sm.off, sm.throughput_on_over_off.median
            hit_ok, speed_ok = on.hit_rate >= GOAL_HIT_RATE, speedup >= GOAL_CACHE_SPEEDUP
            cause = ""
            if not speed_ok and off.encoder_share is not None:
                bound = 1 / (1 - on.hit_rate * off.encoder_share)
                cause = (
                    f" Cause: with the cache off, user_encoder is {100 * off.encoder_share:.0f}% of the two models' "
                    f"compute per request at N={n} (Triton statistics), so skipping it on {100 * on.hit_rate:.0f}% "
                    f"of requests can at best give {bound:.2f}x; the scorer's N-candidate work and the per-request "
                    "serving cost stay."
                )
                if speedup < 0.9 * bound:
                    cause += (
                        f" Measured {speedup:.2f}x, below that bound: the composing models run as a pipeline and "
                        "the item_scorer stage is the slower one, so a hit frees encoder time the scorer's "
                        "instance(s) cannot use (compare the configurations)."
                    )
            if not hit_ok:
                cause += (
                    f" Hit rate below goal: the trace's ideal rate is {100 * ses.traces[n].ideal_hit_rate:.0f}%; "
                    "requests of one session racing in different lanes miss together."
                )
            out.append(
                Goal(
                    ses.config,
                    f"sessions k={ses.model.k}, N={n}: hit rate >= {100 * GOAL_HIT_RATE:.0f}% and throughput >= "
                    f"{GOAL_CACHE_SPEEDUP}x cache off",
                    hit_ok and speed_ok,
                    f"hit rate {100 * on.hit_rate:.0f}%, throughput {on.throughput_rps:.1f} vs "
                    f"{off.throughput_rps:.1f} req/s (medians over rounds), on/off per round "
                    f"{ratio(sm.throughput_on_over_off)}; p99 {on.p99_ms:.1f} vs {off.p99_ms:.1f} ms.{cause}",
                )
            )
    return out


def speed_goals(r: Results) -> list[Goal]:
    """Issue 22's goals; a missed efficiency goal names the graph's top operators."""
    out = []

    def top_ops(graph: str, tb: int, n: int) -> str:
        ops = [
            o
            for o in r.op_profile
            if (o.graphs, o.graph, o.block_len) == (GOAL_RUNTIME, graph, tb)
            and (o.candidates == n or graph == USER_ENCODER)  # the encoder never sees the candidates
        ]
        top = ", ".join(f"{o.op} {100 * o.share:.0f}%" for o in ops[:4])
        return f" Top kernels ((d) per operator): {top}." if ops else ""

    peak = r.matmul_flops.median
    for stage, graph, limit, min_n, only_tb in (
        ("scorer", ITEM_SCORER, SCORER_GOAL, SCORER_GOAL_MIN_N, None),
        ("encoder", USER_ENCODER, ENCODER_GOAL, 0, ENCODER_GOAL_TB),
    ):

        def keep(tb: int, n: int, min_n: int = min_n, only_tb: int | None = only_tb) -> bool:
            return n >= min_n and only_tb in (None, tb)

        # (Tb, N, share of the limit): each graph back to back, as a served instance runs it, where the run has
        # them; and each stage inside the in-process pipeline ((d)'s table: after another runtime's run)
        steady = [
            (s.block_len, s.candidates, s.flops_per_s.median / peak)
            for s in r.steady
            if (s.graphs, s.graph) == (GOAL_RUNTIME, graph) and keep(s.block_len, s.candidates)
        ]
        piped = [
            (e.block_len, e.candidates, e.fraction_of_limit)
            for e in r.efficiency
            if e.stage == f"{GOAL_RUNTIME} {stage}" and keep(e.block_len, e.candidates)
        ]
        rows = steady or piped
        if not rows:
            continue
        worst = min(rows, key=lambda x: x[2])
        met = worst[2] >= limit

        def shares(xs: list[tuple[int, int, float]], per_n: bool) -> str:
            return ", ".join(f"Tb={tb}{f' N={n}' if per_n else ''}: {100 * f:.0f}%" for tb, n, f in xs)

        figures = shares(rows, graph == ITEM_SCORER or not steady)
        if steady and piped:
            figures = (
                f"back to back, as a served instance runs it: {figures}; inside the in-process pipeline ((d)'s "
                f"table, each stage right after another runtime's run): {shares(piped, True)}"
            )
        cause = "" if met else top_ops(graph, worst[0], worst[1])
        goal = f"{GOAL_RUNTIME} {stage} >= {100 * limit:.0f}% of the matmul limit"
        out.append(Goal("", goal, met, f"{figures}.{cause}"))
    cells = [c for c in r.runtimes if c.candidates == RUNTIME_GOAL_N and GOAL_RUNTIME in c.speedup_vs_eager]
    if cells:
        ratios = {c.block_len: c.speedup_vs_eager[GOAL_RUNTIME].median for c in cells}
        figures = ", ".join(f"Tb={tb}: {v:.2f}x" for tb, v in ratios.items())
        goal = f"{GOAL_RUNTIME} >= {RUNTIME_GOAL}x PyTorch eager at N = {RUNTIME_GOAL_N}"
        out.append(Goal("", goal, min(ratios.values()) >= RUNTIME_GOAL, f"{figures} (median over rounds)."))
    levels = [lv for lv in r.served.levels if lv.concurrency >= SERVED_GOAL_MIN_CONCURRENCY]
    if levels:
        figures = ", ".join(f"{lv.cache_dtype} c={lv.concurrency}: {lv.throughput_ratio.median:.2f}" for lv in levels)
        goal = f"served / in-process throughput >= {SERVED_GOAL} at concurrency >= {SERVED_GOAL_MIN_CONCURRENCY}"
        met = all(lv.throughput_ratio.median >= SERVED_GOAL for lv in levels)
        lowest = min(levels, key=lambda lv: lv.throughput_ratio.median)
        out.append(
            Goal("as exported", goal, met, f"{figures}.{'' if met else served_cause(lowest) + cpu_bound(levels)}")
        )
    return out


def cpu_bound(levels: list[ServedLevel]) -> str:
    """Where every core is busy on both sides, throughput is cores / CPU per request, so served / in-process
    cannot pass in-process CPU / served CPU per request: the bound per level, from ``/proc``."""
    bounds = []
    for lv in levels:
        cpu = lv.cpu_ms_per_request
        served = served_cpu_ms(lv)
        if served > 0 and "tritonserver" in cpu:
            bounds.append(f"{lv.cache_dtype} c={lv.concurrency}: {cpu['in_process'] / served:.2f}")
    if not bounds:
        return ""
    return (
        f" With the cores saturated, the ratio is bounded by in-process / served CPU per request: {', '.join(bounds)}."
    )


def goals(r: Results) -> list[Goal]:
    return served_goals(r) + session_goals(r) + speed_goals(r)


def flags(r: Results) -> list[str]:
    """Missed goals, and each stage's worst cell below ``EFFICIENCY_FLAG`` of the matmul limit."""
    out = [f"missed: {g.scope + ': ' if g.scope else ''}{g.goal} ({g.measured})" for g in goals(r) if not g.met]
    far = [e for e in r.efficiency if e.fraction_of_limit < EFFICIENCY_FLAG]
    for stage in sorted({e.stage for e in far}):
        worst = min((e for e in far if e.stage == stage), key=lambda e: e.fraction_of_limit)
        out.append(
            f"{stage} reaches {100 * worst.fraction_of_limit:.1f}% of the matmul limit at Tb={worst.block_len} "
            f"N={worst.candidates} (below {100 * EFFICIENCY_FLAG:.0f}%)"
        )
    return out


def op_groups(r: Results) -> dict[tuple[str, str, int, int], list[op_profile.OpTime]]:
    """(export, graph, Tb, N) -> its operator rows, highest time first."""
    groups: dict[tuple[str, str, int, int], list[op_profile.OpTime]] = defaultdict(list)
    for row in r.op_profile:
        groups[(row.graphs, row.graph, row.block_len, row.candidates)].append(row)
    return groups


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # Markdown, not HTML
)
ENV.filters.update(ratio=ratio, ms=ms, kib=kib, span=span, f=format)
ENV.globals.update(
    doc=doc,
    roofline=roofline,
    sessions=sessions,
    op_profile=op_profile,
    overload=overload,
    replicas=replicas,
    top_ops=TOP_OPS,
    nan=float("nan"),
    zip=zip,
)


def render(r: Results, images: list[str]) -> str:
    """``report.md``: every section of a run."""
    findings = FINDINGS.read_text().strip() if FINDINGS.is_file() else "(no docs/bench/findings.md)"
    return ENV.get_template("report.md.j2").render(
        r=r, cfg=r.cfg, images=images, goals=goals(r), flags=flags(r), op_groups=op_groups(r), findings=findings
    )


def headline(r: Results) -> str:
    """The run's main ratios in a few lines (also printed at the end of ``python -m bench``)."""
    return ENV.get_template("headline.txt.j2").render(r=r).strip()


def render_section(name: str, results: Any) -> str:
    """``overload.md`` or ``replicas.md`` of a standalone section run: the report's section with a header."""
    assert dataclasses.is_dataclass(results), f"render_section takes a results dataclass, got {type(results)}"
    return ENV.get_template(f"{name}_page.md.j2").render(section=results)
