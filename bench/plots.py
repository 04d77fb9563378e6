"""PNG plots of a run's results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: the backend is chosen before pyplot loads

from bench.results import Results

PATH_STYLE = {"per_pair": ("per-pair", "tab:red"), "sumi": ("SUMI", "tab:blue"), "split": ("split", "tab:green")}


def _turbo(results: Results, path: Path) -> None:
    cells = results.turbo + results.gpu.turbo
    tbs = sorted({c.block_len for c in cells})
    fig, axes = plt.subplots(1, len(tbs), figsize=(5.5 * len(tbs), 4.2), squeeze=False)
    for ax, tb in zip(axes[0], tbs, strict=True):
        for device in sorted({c.device for c in cells}):
            rows = sorted((c for c in cells if c.block_len == tb and c.device == device), key=lambda c: c.candidates)
            ns = [c.candidates for c in rows]
            for p, (label, color) in PATH_STYLE.items():
                med = [c.candidates_per_s[p].median for c in rows]
                lo = [c.candidates_per_s[p].q1 for c in rows]
                hi = [c.candidates_per_s[p].q3 for c in rows]
                style = "-" if device == "cpu" else "--"
                ax.plot(ns, med, style, marker="o", color=color, label=f"{label} ({device})")
                ax.fill_between(ns, lo, hi, color=color, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("candidates per request N")
        ax.set_ylabel("candidates scored per second")
        ax.set_title(f"Tb = {tb} (S = {results.cfg.n_blocks}·{tb} user tokens)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("(a) TURBO: median and IQR over rounds; per-pair beyond the measured N is extrapolated")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _runtimes(results: Results, path: Path) -> None:
    cells = results.runtimes
    runtimes = list(cells[0].seconds)
    labels = [f"Tb={c.block_len}\nN={c.candidates}" for c in cells]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cells)), 4.2))
    width = 0.8 / len(runtimes)
    colors = {"torch_eager": "tab:orange", "ort_fp32": "tab:blue", "ort_fp16": "tab:purple"}
    for i, rt in enumerate(runtimes):
        xs = [j + (i - (len(runtimes) - 1) / 2) * width for j in range(len(cells))]
        enc = [1e3 * c.seconds[rt]["encoder"].median for c in cells]
        sco = [1e3 * c.seconds[rt]["scorer"].median for c in cells]
        color = colors.get(rt, "tab:gray")
        ax.bar(xs, enc, width, color=color, alpha=0.55, label=f"{rt} encoder")
        ax.bar(xs, sco, width, bottom=enc, color=color, label=f"{rt} scorer")
    ax.set_xticks(range(len(cells)), labels, fontsize=8)
    ax.set_ylabel("ms per request (median), encoder + scorer")
    ax.set_title("(b) split graphs: PyTorch eager vs ONNX Runtime, same threads")
    ax.legend(fontsize=7, ncol=len(runtimes))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _served(results: Results, path: Path) -> None:
    levels = results.served.levels
    colors = {"served": "tab:blue", "in_process": "tab:orange"}
    dashes = {"fp32": "-", "fp16": "--"}
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for dtype in sorted({lv.cache_dtype for lv in levels}):
        rows = [lv for lv in levels if lv.cache_dtype == dtype]
        cs = [lv.concurrency for lv in rows]
        latency = {
            "served": [{q: lv.served.latency_us[q] / 1e3 for q in ("p50", "p99")} for lv in rows],
            "in_process": [{"p50": 1e3 * lv.in_process.median, "p99": 1e3 * lv.in_process.p99} for lv in rows],
        }
        throughput = {
            "served": [lv.served.throughput_rps for lv in rows],
            "in_process": [lv.in_process_rps.median for lv in rows],
        }
        for side, color in colors.items():
            for q, marker, alpha in (("p50", "o", 1.0), ("p99", "^", 0.45)):
                ax_lat.plot(
                    cs,
                    [x[q] for x in latency[side]],
                    dashes.get(dtype, ":"),
                    marker=marker,
                    color=color,
                    alpha=alpha,
                    label=f"{side} {q} ({dtype})",
                )
            ax_tp.plot(cs, throughput[side], dashes.get(dtype, ":"), marker="o", color=color, label=f"{side} ({dtype})")
    concurrencies = sorted({lv.concurrency for lv in levels})
    for ax in (ax_lat, ax_tp):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set_xlabel("client concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency per request, ms")
    ax_tp.set_ylabel("requests per second (served: perf_analyzer)")
    s = results.served
    fig.suptitle(
        f"(c) Triton ensemble (perf_analyzer, gRPC) vs in-process ONNX Runtime: B={s.batch} Tb={s.block_len} "
        f"N={s.candidates}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _roofline(results: Results, path: Path) -> None:
    rows = results.efficiency
    peak = results.matmul_flops.median / 1e9
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for stage in sorted({r.stage for r in rows}):
        pts = [r for r in rows if r.stage == stage]
        ax.plot([r.gflop for r in pts], [r.gflops_per_s for r in pts], "o", label=stage, alpha=0.8)
    ax.axhline(peak, color="black", linestyle="--", label=f"torch.matmul limit {peak:.0f} GFLOP/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GFLOP per request (matrix products, from the config)")
    ax.set_ylabel("achieved GFLOP/s (median time)")
    ax.set_title("(d) each stage against the machine's matmul rate (CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS: dict[str, Callable[[Results, Path], None]] = {
    "turbo.png": _turbo,
    "runtimes.png": _runtimes,
    "served.png": _served,
    "roofline.png": _roofline,
}


def write_all(results: Results, out: Path) -> list[str]:
    """Write every plot into ``out``; returns their file names."""
    for name, plot in PLOTS.items():
        plot(results, out / name)
    return list(PLOTS)
