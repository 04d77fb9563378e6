"""``docs/bench/report.md`` from a results dict: every number comes from ``results.json``."""

from __future__ import annotations

from typing import Any

from bench import op_profile, overload, replicas, roofline
from bench.sessions import __doc__ as sessions_doc

SPREAD_NOTE = (
    "Ratios and times read **median [IQR] (min–max)** over the rounds of this run; a ratio is taken "
    "inside each round (all contenders timed back to back, order rotating), then summarised."
)
PATH_NAMES = ("per_pair", "sumi", "split")
GOAL_SERVED_RATIO = 0.8  # issue 11: served / in-process throughput at concurrency >= GOAL_CONCURRENCY
GOAL_CONCURRENCY = 4
COMPOSING = ("user_encoder", "item_scorer")
GOAL_HIT_RATE = 0.7  # issue 11: session traffic, k = 4
GOAL_CACHE_SPEEDUP = 1.3
EFFICIENCY_FLAG = 0.10  # a stage below this fraction of the matmul limit is "far from its limit"


def ratio(s: dict[str, float], unit: str = "x") -> str:
    return f"{s['median']:.2f}{unit} [{s['q1']:.2f}–{s['q3']:.2f}] ({s['min']:.2f}–{s['max']:.2f})"


def pct(s: dict[str, float]) -> str:
    return (
        f"{100 * s['median']:+.0f}% [{100 * s['q1']:+.0f}–{100 * s['q3']:+.0f}] "
        f"({100 * s['min']:+.0f}–{100 * s['max']:+.0f})"
    )


def ms(s: dict[str, float]) -> str:
    return f"{1e3 * s['median']:.3g} [{1e3 * s['q1']:.3g}–{1e3 * s['q3']:.3g}]"


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _span(fractions: list[float]) -> str:
    lo, hi = 100 * min(fractions), 100 * max(fractions)
    return f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}%–{hi:.0f}%"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(cells: list[dict[str, Any]], tb: int, n: int) -> dict[str, Any]:
    return next(c for c in cells if c["block_len"] == tb and c["candidates"] == n)


def headline(r: dict[str, Any]) -> str:
    """The run's main ratios in a few lines (also printed at the end of ``python -m bench``)."""
    t = r["turbo"]
    tb, n = max(c["block_len"] for c in t), max(c["candidates"] for c in t)
    big = _cell(t, tb, n)
    lines = [
        f"(a) Tb={tb} N={n}, {big['device']}: candidates/s over per-pair: split "
        f"{ratio(big['speedup_vs_per_pair']['split'])}, SUMI {ratio(big['speedup_vs_per_pair']['sumi'])} "
        f"(per-pair {big['per_pair_method']})",
    ]
    rt = _cell(r["runtimes"], tb, n)
    for name, s in rt["speedup_vs_eager"].items():
        lines.append(f"(b) Tb={tb} N={n}: {name} {ratio(s)} faster than PyTorch eager (encoder + scorer)")
    for lv in r["served"]["levels"]:
        sv = lv["served"]
        lines.append(
            f"(c) {lv['cache_dtype']} concurrency {lv['concurrency']}: perf_analyzer {sv['throughput_rps']:.1f} req/s, "
            f"p50/p99 {sv['latency_us']['p50'] / 1e3:.1f}/{sv['latency_us']['p99'] / 1e3:.1f} ms; "
            f"served / in-process throughput {ratio(lv['throughput_ratio'])}"
        )
    for ses in all_sessions(r):
        for n, sm in ses["summary"].items():
            lines.append(
                f"(f) {ses.get('config', '')}, sessions k={ses['model']['k']} N={n}: response cache on/off "
                f"throughput {ratio(sm['throughput_on_over_off'])}, hit rate {100 * sm['on']['hit_rate']:.0f}%"
            )
    return "\n".join(lines)


def _machine(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = [
        ["CPU", f"{m['cpu']} ({m['cpus_usable']} usable of {m['logical_cpus']} logical CPUs)"],
        ["threads", f"{m['threads']} (torch intra-op, ONNX Runtime intra-op, each served model instance)"],
        ["GPU", m["gpu"]],
        ["torch / onnxruntime / numpy", f"{m['torch']} / {m['onnxruntime']} / {m['numpy']}"],
        [
            "Triton server",
            f"{m['triton_server']} (nvidia-pytriton {m['nvidia_pytriton']}), tritonclient {m['tritonclient']}",
        ],
        ["Python, OS", f"{m['python']}, {m['platform']}"],
        [
            "load average (1/5/15 min)",
            f"start {m['load_average_start']}, end {m['load_average_end']}: above the core count means other "
            "processes shared the CPU during the run",
        ],
    ]
    return _table(["", ""], rows)


def _turbo(r: dict[str, Any]) -> str:
    cfg = roofline.config_of(r)
    out = []
    for tb in sorted({c["block_len"] for c in r["turbo"]}):
        rows = []
        for c in sorted((c for c in r["turbo"] if c["block_len"] == tb), key=lambda c: c["candidates"]):
            n, lat, sp = c["candidates"], c["latency_s"], c["speedup_vs_per_pair"]
            pp_flops = roofline.path_flops(cfg, "per_pair", 1, tb, n)
            rows.append(
                [
                    str(n),
                    f"{ms(lat['per_pair'])} ({c['per_pair_method']})",
                    ms(lat["sumi"]),
                    ms(lat["split"]),
                    f"{c['candidates_per_s']['split']['median']:,.0f}",
                    ratio(sp["sumi"]),
                    ratio(sp["split"]),
                    f"{pp_flops / roofline.path_flops(cfg, 'sumi', 1, tb, n):.1f}x / "
                    f"{pp_flops / roofline.path_flops(cfg, 'split', 1, tb, n):.1f}x",
                ]
            )
        pads = [c["padding"] for c in r["turbo"] if c["block_len"] == tb]
        out.append(
            f"**Tb = {tb}** (S = {cfg.n_blocks * tb} user-token slots, "
            f"{_span(pads)} of them padding)\n\n"
            + _table(
                [
                    "N",
                    "per-pair ms",
                    "SUMI ms",
                    "split ms",
                    "split cand/s",
                    "SUMI vs per-pair",
                    "split vs per-pair",
                    "per-pair FLOPs / SUMI, / split",
                ],
                rows,
            )
        )
    checks = [c for c in r["turbo"] if c["per_pair_scaling_check"] is not None]
    if checks:
        items = ", ".join(
            f"Tb={c['block_len']} N={c['candidates']}: {ratio(c['per_pair_scaling_check'])}" for c in checks
        )
        out.append(
            "Extrapolation check: where per-pair is timed in full, its first "
            f"{r['settings']['per_pair_subset']} candidates are timed in the same rounds too; measured / "
            f"(subset time x N / subset), per round (1.00 = exactly linear): {items}."
        )
    return "\n\n".join(out)


def _runtimes(r: dict[str, Any]) -> str:
    rows = []
    for c in r["runtimes"]:
        row = [str(c["block_len"]), str(c["candidates"])]
        for st in c["seconds"].values():
            row.append(f"{ms(st['encoder'])} + {ms(st['scorer'])}")
        row += [ratio(s) for s in c["speedup_vs_eager"].values()]
        rows.append(row)
    names = list(r["runtimes"][0]["seconds"])
    head = ["Tb", "N", *(f"{n} ms (encoder + scorer)" for n in names)]
    head += [f"{n} vs eager" for n in r["runtimes"][0]["speedup_vs_eager"]]
    return _table(head, rows)


def _served(r: dict[str, Any]) -> str:
    s = r["served"]
    hb = s["handoff_bytes"]
    pa = s["perf_analyzer"]
    st = pa["settings"]
    parts = [
        f"Workload: {s['requests']} distinct requests (B={s['batch']}, Tb={s['block_len']}, N={s['candidates']}, "
        f"{100 * s['padding']:.0f}% of history slots padding), the same list for both sides at every concurrency. "
        f"Request tensors {kib(s['wire_bytes']['request'])}, response {kib(s['wire_bytes']['response'])} per request.",
        f"Served side: `perf_analyzer` {pa['version']} (from the `tritonclient=={pa['version']}` wheel, a C++ client), "
        f"gRPC, one synchronous client per concurrency slot, `--input-data` with the requests above; windows of "
        f"{st['interval_ms']} ms until three agree within {st['stability_pct']}% (at most {st['max_trials']}; a level "
        "that never settles is re-run accepting any three and marked *unstable*). The response cache is off here: "
        "the in-process side has none, so both compute every request; (f) measures the cache. In-process side: the "
        "same ONNX files and requests from as many Python threads, once before and once after the served run "
        "(the ratio column has one value per in-process run).",
        "Keys/values handed from `user_encoder` to `item_scorer` per request (B·L·H·S·dh per tensor, plus the "
        "[B, S] bool mask): "
        + ", ".join(
            f"{d} cache {kib(b['total'])} (keys {kib(b['user_keys'])} + values {kib(b['user_values'])} + mask "
            f"{b['user_mask']} B)"
            for d, b in hb.items()
        )
        + ".",
    ]
    rows = []
    for lv in s["levels"]:
        sv, ip = lv["served"], lv["in_process"]
        rows.append(
            [
                lv["cache_dtype"],
                str(lv["concurrency"]) + ("" if sv["stable"] else " (unstable)"),
                " / ".join(f"{sv['latency_us'][q] / 1e3:.2f}" for q in ("p50", "p95", "p99")),
                " / ".join(f"{1e3 * ip[q]:.2f}" for q in ("p50", "p95", "p99")),
                f"{sv['throughput_rps']:.1f} / {lv['in_process_rps']['median']:.1f}",
                f"{lv['throughput_ratio']['min']:.2f}–{lv['throughput_ratio']['max']:.2f}",
            ]
        )
    parts.append(
        _table(
            [
                "cache dtype",
                "concurrency",
                "served p50/p95/p99 ms",
                "in-process p50/p95/p99 ms",
                "req/s served / in-process",
                "throughput served / in-process",
            ],
            rows,
        )
    )
    srows = []
    for lv in s["levels"]:
        for model, phases in lv["server_ms_per_request"].items():
            cache = lv["cache"].get(model, {})
            srows.append(
                [
                    lv["cache_dtype"],
                    str(lv["concurrency"]),
                    model,
                    *(f"{phases[p]:.2f}" for p in ("queue", "compute_input", "compute_infer", "compute_output")),
                    f"{lv['requests_per_execution'].get(model, float('nan')):.2f}",
                    f"{cache['cache_hit']} / {cache['cache_miss']}" if cache else "–",
                ]
            )
    crows = [
        [
            lv["cache_dtype"],
            str(lv["concurrency"]),
            f"{lv['cpu_ms_per_request']['in_process']:.2f}",
            *(f"{lv['cpu_ms_per_request'][k]:.2f}" for k in ("client", "tritonserver", "backend_stubs")),
            f"{sum(v for k, v in lv['cpu_ms_per_request'].items() if k != 'in_process'):.2f}",
        ]
        for lv in s["levels"]
        if "backend_stubs" in lv["cpu_ms_per_request"]
    ]
    parts.append(
        "Inside the server (Triton's statistics API, read before and after each perf_analyzer run; ms per request "
        "that ran; for `astro` the ensemble's own figures span both steps; req/exec = requests per execution, "
        "what the dynamic batcher and the Python backend's batched ONNX Runtime call achieved; cache = hits / "
        "misses):\n\n"
        + _table(
            [
                "cache dtype",
                "concurrency",
                "model",
                "queue",
                "compute input",
                "compute infer",
                "compute output",
                "req/exec",
                "cache hits / misses",
            ],
            srows,
        )
    )
    if crows:
        parts.append(
            "CPU time per request (user + system: perf_analyzer from this process's children, the server's process "
            "group from `/proc`; client, `tritonserver` and its Python-backend stubs share this machine's cores):"
            "\n\n"
            + _table(
                [
                    "cache dtype",
                    "concurrency",
                    "in-process",
                    "served: perf_analyzer",
                    "tritonserver",
                    "backend stubs",
                    "served total",
                ],
                crows,
            )
        )
    for v in s.get("variants", []):
        vrows = []
        for lv in v["levels"]:
            sv = lv["served"]
            vrows.append(
                [
                    lv["cache_dtype"],
                    str(lv["concurrency"]) + ("" if sv["stable"] else " (unstable)"),
                    " / ".join(f"{sv['latency_us'][q] / 1e3:.2f}" for q in ("p50", "p95", "p99")),
                    f"{sv['throughput_rps']:.1f} / {lv['in_process_rps']['median']:.1f}",
                    f"{lv['throughput_ratio']['min']:.2f}–{lv['throughput_ratio']['max']:.2f}",
                    " / ".join(f"{lv['requests_per_execution'].get(m, float('nan')):.2f}" for m in COMPOSING),
                ]
            )
        parts.append(
            f"**{v['config']}** (the repository as exported but for what the name says, same requests):"
            "\n\n"
            + _table(
                [
                    "cache dtype",
                    "concurrency",
                    "served p50/p95/p99 ms",
                    "req/s served / in-process",
                    "throughput served / in-process",
                    "req/exec encoder / scorer",
                ],
                vrows,
            )
        )
    return "\n\n".join(parts)


def all_sessions(r: dict[str, Any]) -> list[dict[str, Any]]:
    """(f) as exported, then the repository variants it was also run on."""
    return [r["sessions"], *r.get("session_variants", [])] if r.get("sessions") else []


def _sessions(r: dict[str, Any]) -> str:
    runs = all_sessions(r)
    if not runs:
        return "Not run."
    doc = (sessions_doc or "").split("\n\n", 1)[1].strip()
    return "\n\n".join([doc, *(_session_config(ses) for ses in runs)])


def _session_config(ses: dict[str, Any]) -> str:
    m = ses["model"]
    traces = ", ".join(
        f"N={n}: {t['requests']} requests per round, {t['sessions']} sessions of {t['distinct_users']} users over "
        f"the rounds, ideal hit rate {100 * t['ideal_hit_rate']:.0f}%"
        for n, t in ses["traces"].items()
    )
    rows = []
    for x in ses["runs"]:
        rows.append(
            [
                str(x["round"] + 1),
                str(x["candidates"]),
                x["cache"],
                f"{x['throughput_rps']:.1f}",
                f"{x['latency_ms']['p50']:.2f} / {x['latency_ms']['p99']:.2f}",
                f"{x['hits']} / {x['misses']}",
                f"{100 * x['hit_rate']:.0f}%" if x["cache"] == "on" else "–",
                str(x["scorer_cache_activity"]),
                str(x["requests"]) + (" (wrapped)" if x["wrapped"] else ""),
            ]
        )
    speed = ", ".join(f"N={n}: **{ratio(sm['throughput_on_over_off'])}**" for n, sm in ses["summary"].items())
    hits = ", ".join(
        f"N={n}: **{100 * sm['on']['hit_rate']:.0f}%** ({sm['on']['hits']} hits / {sm['on']['misses']} misses)"
        for n, sm in ses["summary"].items()
    )
    return "\n\n".join(
        [
            f"### {ses.get('config', 'as exported')}",
            f"This run: {m['users']} users, Zipf s = {m['zipf_s']}, k = {m['k']} requests per session, history "
            f"growth between sessions p = {m['p_new_event']}, {m['min_events']}–{m['max_events']} events per user, "
            f"{ses['concurrency']} client lanes, {ses['rounds']} rounds; cache size {ses['cache_size']:,} bytes "
            "(the `python -m serve` "
            f"default: the sizing rule for 10,000 users). Traces: {traces}.",
            _table(
                [
                    "round",
                    "N",
                    "response cache",
                    "req/s",
                    "p50 / p99 ms",
                    "user_encoder hits / misses",
                    "hit rate",
                    "item_scorer cache activity",
                    "requests served",
                ],
                rows,
            ),
            f"Throughput cache on / cache off, per round: {speed}. Hit rate over all rounds: {hits}.",
        ]
    )


def _roofline(r: dict[str, Any]) -> str:
    cfg = roofline.config_of(r)
    peak = r["matmul_flops"]
    eff = r["efficiency"]
    shapes = sorted({(e["block_len"], e["candidates"]) for e in eff})
    stages = list(dict.fromkeys(e["stage"] for e in eff))
    by_key = {(e["stage"], e["block_len"], e["candidates"]): e for e in eff}
    rows = [
        [stage, *(f"{100 * by_key[(stage, tb, n)]['fraction_of_limit']:.0f}%" for tb, n in shapes)] for stage in stages
    ]
    gflop = [
        ["encoder", *(f"{roofline.encoder_flops(cfg, 1, tb) / 1e9:.3f}" for tb, n in shapes)],
        ["scorer", *(f"{roofline.scorer_flops(cfg, 1, tb, n) / 1e9:.3f}" for tb, n in shapes)],
        *([p, *(f"{roofline.path_flops(cfg, p, 1, tb, n) / 1e9:.3f}" for tb, n in shapes)] for p in PATH_NAMES),
    ]
    head = ["", *(f"Tb={tb} N={n}" for tb, n in shapes)]
    doc = (roofline.__doc__ or "").split("\n\n", 1)[1].strip()
    return "\n\n".join(
        [
            doc,
            f"Limit measured in this run: torch.matmul {r['settings']['matmul_size']}² fp32 at "
            f"{r['machine']['threads']} thread(s) = **{peak['median'] / 1e9:.1f} GFLOP/s** "
            f"[{peak['q1'] / 1e9:.1f}–{peak['q3'] / 1e9:.1f}] ({peak['min'] / 1e9:.1f}–{peak['max'] / 1e9:.1f}).",
            "GFLOP per request (B = 1):\n\n" + _table(["graph / path", *head[1:]], gflop),
            "Share of the limit reached (FLOPs / median time / limit; `results.json` has the times and GFLOP/s):\n\n"
            + _table(["stage", *head[1:]], rows),
        ]
    )


def _gpu(r: dict[str, Any]) -> str:
    g = r["gpu"]
    if "turbo" not in g:
        return (
            f"**{g['device']}** to PyTorch on this machine: every number in this report is CPU. "
            "`python -m bench` runs (a) and the PyTorch half of (b) on `cuda` whenever "
            "`torch.cuda.is_available()`, and records the device name here."
        )
    sub = {**r, "turbo": g["turbo"], "runtimes": g["runtimes"]}
    return "\n\n".join(
        [
            f"Device: **{g['device']}**. Only the tables in this section are GPU numbers; torch.matmul on it: "
            f"{g['matmul_flops']['median'] / 1e12:.1f} TFLOP/s.",
            _turbo(sub),
            _runtimes(sub),
        ]
    )


def _training(r: dict[str, Any]) -> str:
    if "training" not in r:
        return "Not measured in this run."
    rows = [
        [
            t["device"],
            f"{t['users']} x {t['candidates']}",
            f"{t['sumi_samples_per_s']['median']:,.0f}",
            f"{t['per_pair_samples_per_s']['median']:,.0f}",
            ratio(t["speedup"]),
        ]
        for t in r["training"]
    ]
    return (
        "One full training step (forward, backward, AdamW) of the same `small` model on the same samples: "
        "SUMI rows (one row per user with all its candidates, each history encoded once) vs per-pair rows "
        "(one (user, candidate) per row, the history repeated). Ratio of samples/s per round, median "
        "[IQR] (min-max); the paper reports 5.15x for its model and data.\n\n"
        + _table(["device", "users x candidates", "SUMI samples/s", "per-pair samples/s", "SUMI / per-pair"], rows)
    )


def _blocks(r: dict[str, Any]) -> str:
    rows = [
        [
            str(b["block_len"]),
            str(b["batch"]),
            f"{b['blocks_ms']:.3f}",
            f"{b['one_block_ms']:.3f}",
            f"{b['one_block_ms'] / b['blocks_ms']:.2f}x",
        ]
        for b in r["block_attention"]
    ]
    return (
        "From `bench.block_attention.run` (user encoder with the config's Nb blocks of Tb vs one block of Nb·Tb, "
        "same tokens, random weights, full histories; median of its repeats, lower of two passes):\n\n"
        + _table(["Tb", "B", "Nb blocks ms", "one block ms", "one / Nb"], rows)
    )


def _decomposition(r: dict[str, Any]) -> str:
    """Where the served time goes at the lowest concurrency, per cache dtype (means throughout)."""
    lines = []
    for dtype in dict.fromkeys(lv["cache_dtype"] for lv in r["served"]["levels"]):
        lv = min((x for x in r["served"]["levels"] if x["cache_dtype"] == dtype), key=lambda x: x["concurrency"])
        stats = lv["server_ms_per_request"]
        composing = [m for m in stats if m != "astro"]
        served, local = lv["served"]["latency_us"]["avg"] / 1e3, 1e3 * lv["in_process"]["mean"]
        queue = sum(stats[m]["queue"] for m in composing)
        io = sum(stats[m]["compute_input"] + stats[m]["compute_output"] for m in composing)
        infer = sum(stats[m]["compute_infer"] for m in composing)
        lines.append(
            f"- {dtype} cache, concurrency {lv['concurrency']}: served {served:.2f} ms (perf_analyzer mean) vs "
            f"in-process {local:.2f} ms (+{served - local:.2f} ms). Inside Triton: the two stubs' compute_infer "
            f"{infer:.2f} ms (+{infer - local:.2f} ms over in-process ONNX Runtime: Python backend execute, stub "
            f"round trips and ONNX Runtime running in two processes), queueing {queue:.2f} ms, tensors into/out of "
            f"the stubs {io:.2f} ms; the remaining {served - infer - queue - io:.2f} ms is gRPC, the client and "
            "ensemble scheduling."
        )
    return (
        "Where the served time goes (mean latency per request, against the means of Triton's statistics):\n\n"
        + "\n".join(lines)
    )


def _served_cause(lv: dict[str, Any]) -> str:
    """Why a served level falls short of in-process: the item_scorer stage's rate, and the CPU per request."""
    scorer = lv["server_ms_per_request"].get("item_scorer", {})
    per_exec, rpe = scorer.get("compute_infer", 0.0), lv["requests_per_execution"].get("item_scorer", 1.0)
    cpu = lv["cpu_ms_per_request"]
    served_cpu = sum(v for k, v in cpu.items() if k != "in_process")
    cap = f"{1e3 * rpe / per_exec:.0f}" if per_exec > 0 else "?"
    return (
        f" Missed at {lv['cache_dtype']} c={lv['concurrency']}: the item_scorer stage sets the served rate: its "
        f"instance(s) took {per_exec:.1f} ms per execution of {rpe:.1f} requests, at most {cap} req/s per "
        f"instance (served {lv['served']['throughput_rps']:.0f}), while in-process ONNX Runtime runs encoder and "
        f"scorer on every core ({lv['in_process_rps']['median']:.0f} req/s); the served path also spends "
        f"{served_cpu:.2f} CPU ms per request (perf_analyzer {cpu.get('client', 0):.2f}, tritonserver "
        f"{cpu.get('tritonserver', 0):.2f}, stubs {cpu.get('backend_stubs', 0):.2f}) against "
        f"{cpu['in_process']:.2f} in-process."
    )


def goals(r: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(goal, met, figures and, where missed, the cause) for issue 11's benchmark goals."""
    out = []
    configs = [(r["served"].get("config", "as exported"), r["served"]["levels"])]
    configs += [(v["config"], v["levels"]) for v in r["served"].get("variants", [])]
    for config, all_levels in configs:
        levels = [lv for lv in all_levels if lv["concurrency"] >= GOAL_CONCURRENCY]
        if not levels:
            continue
        worst = min(levels, key=lambda lv: lv["throughput_ratio"]["median"])
        met = all(lv["throughput_ratio"]["median"] >= GOAL_SERVED_RATIO for lv in levels)
        figures = ", ".join(
            f"{lv['cache_dtype']} c={lv['concurrency']}: {lv['throughput_ratio']['median']:.2f}" for lv in levels
        )
        out.append(
            (
                f"{config}: served / in-process throughput >= {GOAL_SERVED_RATIO} at concurrency >= "
                f"{GOAL_CONCURRENCY} (perf_analyzer)",
                met,
                f"median ratios {figures}.{'' if met else _served_cause(worst)}",
            )
        )
    for ses in all_sessions(r):
        for n, sm in ses["summary"].items():
            on, off = sm["on"], sm["off"]
            speedup = sm["throughput_on_over_off"]["median"]
            hit_ok, speed_ok = on["hit_rate"] >= GOAL_HIT_RATE, speedup >= GOAL_CACHE_SPEEDUP
            share = off.get("encoder_share")
            cause = ""
            if not speed_ok and share is not None:
                bound = 1 / (1 - on["hit_rate"] * share)
                cause = (
                    f" Cause: with the cache off, user_encoder is {100 * share:.0f}% of the two models' compute per "
                    f"request at N={n} (Triton statistics), so skipping it on {100 * on['hit_rate']:.0f}% of "
                    f"requests can at best give {bound:.2f}x; the scorer's N-candidate work and the per-request "
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
                    f" Hit rate below goal: the trace's ideal rate is "
                    f"{100 * ses['traces'][n]['ideal_hit_rate']:.0f}%; requests of one session racing in "
                    "different lanes miss together."
                )
            out.append(
                (
                    f"{ses.get('config', '')}: sessions k={ses['model']['k']}, N={n}: hit rate >= "
                    f"{100 * GOAL_HIT_RATE:.0f}% and throughput >= {GOAL_CACHE_SPEEDUP}x cache off",
                    hit_ok and speed_ok,
                    f"hit rate {100 * on['hit_rate']:.0f}%, throughput {on['throughput_rps']:.1f} vs "
                    f"{off['throughput_rps']:.1f} req/s (medians over rounds), on/off per round "
                    f"{ratio(sm['throughput_on_over_off'])}; p99 {on['p99_ms']:.1f} vs {off['p99_ms']:.1f} ms.{cause}",
                )
            )
    return out + roofline.speed_goals(r)


def _goals(r: dict[str, Any]) -> str:
    rows = [[g, "met" if ok else "**missed**", text] for g, ok, text in goals(r)]
    return _table(["goal", "", "this run"], rows) if rows else "No served runs."


def _flags(r: dict[str, Any]) -> list[str]:
    out = [f"missed: {g} ({text})" for g, ok, text in goals(r) if not ok]
    far = [e for e in r["efficiency"] if e["fraction_of_limit"] < EFFICIENCY_FLAG]
    for stage in sorted({e["stage"] for e in far}):
        worst = min((e for e in far if e["stage"] == stage), key=lambda e: e["fraction_of_limit"])
        out.append(
            f"{stage} reaches {100 * worst['fraction_of_limit']:.1f}% of the matmul limit at Tb={worst['block_len']} "
            f"N={worst['candidates']} (below {100 * EFFICIENCY_FLAG:.0f}%)"
        )
    return out


def render(r: dict[str, Any], images: list[str], findings: str) -> str:
    flags = _flags(r)
    return (
        "\n\n".join(
            [
                "# ASTRO benchmarks",
                "Generated by `python -m bench` from `results.json` in this folder; do not edit by hand. "
                f"Reproduce with `make bench` (= `.venv/bin/python -m bench`). This run: `{r['command']}`, "
                f"started {r['started']}, {r['seconds']:.0f} s.",
                SPREAD_NOTE,
                "## Machine",
                _machine(r),
                "## Headline",
                "```\n" + headline(r) + "\n```",
                "## (a) TURBO breakdown: per-pair vs SUMI vs split (PyTorch, CPU)",
                "One user (B = 1), the trained `small` checkpoint, `torch.inference_mode`. Latency is per request; "
                "the speedups are per-pair time / path time inside each round; the last column is what the FLOP "
                "counts of (d) alone predict. Per-pair above N = "
                f"{r['settings']['per_pair_full_max']} is timed on its first {r['settings']['per_pair_subset']} "
                "candidates in each round and scaled by N / subset: per-pair is N independent passes of one shape, "
                "so its time is linear in N (checked below on the fully measured cells).",
                _turbo(r),
                "![TURBO](turbo.png)",
                "## (b) Runtimes: PyTorch eager vs ONNX Runtime (CPU)",
                "The export wrappers in PyTorch eager against the exported graphs in ONNX Runtime (`OrtPipeline`), "
                "same request, same intra-op threads; ratio = eager total / runtime total per round (> 1: faster).",
                _runtimes(r),
                "![runtimes](runtimes.png)",
                "## (c) Served: Triton ensemble driven by perf_analyzer vs in-process ONNX Runtime",
                "`python -m export --target python` into a temp folder, served by the `tritonserver` of the "
                "nvidia-pytriton wheel on free loopback ports.",
                _served(r),
                "![served](served.png)",
                "## (f) Session traffic: Triton's response cache off vs on",
                _sessions(r),
                *(["## Overload (bench/overload.py)", overload.render(r["overload"])] if "overload" in r else []),
                *(
                    ["## (h) Replicas: affinity vs round_robin", replicas.render(r["replicas"])]
                    if "replicas" in r
                    else []
                ),
                "## Goals (issue 11)",
                _goals(r),
                "## (d) Limit: FLOPs per graph vs the machine's matmul rate (CPU)",
                _roofline(r),
                *(["### (d) per operator: ONNX Runtime's profiler", op_profile.render(r)] if "op_profile" in r else []),
                "![roofline](roofline.png)",
                "## (e) GPU",
                _gpu(r),
                "## (g) Training: SUMI rows vs one (user, item) per row",
                _training(r),
                "## Block attention (bench/block_attention.py)",
                _blocks(r),
                "## Findings and fixes",
                "Flags raised by this run's numbers:\n\n" + ("\n".join(f"- {f}" for f in flags) if flags else "- none"),
                _decomposition(r),
                findings.strip(),
                "Plots: " + ", ".join(f"`{i}`" for i in images) + ".",
            ]
        )
        + "\n"
    )
