"""(b) The split graphs in PyTorch eager vs ONNX Runtime (fp32 cache and fp16 cache).

Same weights, same requests, same intra-op thread count on both sides (``torch.set_num_threads``
and ONNX Runtime's ``intra_op_num_threads``, set by the caller). Each round runs every runtime's
user encoder, then its item scorer on the keys/values that encoder just produced, with the
runtime order rotating from round to round; stage times and the total are kept per round, and
the ratio to eager is taken inside each round.

PyTorch runs the export wrappers (:class:`~model.astro.UserEncoder`, :class:`~model.astro.ItemScorer`),
i.e. the very modules the ONNX graphs were exported from; ONNX Runtime runs the exported graphs
through :class:`export.parity.OrtPipeline`, chained as the ensemble chains them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from bench.timing import Stats, per_round_ratio, rotated
from bench.turbo import Grid, device_label, device_sync
from contract.request_batch import RequestBatch, TorchBatch
from export.parity import OrtPipeline
from model.astro import AstroModel, ItemScorer, UserEncoder

STAGES = ("encoder", "scorer", "total")
EAGER = "torch_eager"

# one runtime = (encode() -> cache, score(cache) -> scores)
Stage = tuple[Callable[[], Any], Callable[[Any], Any]]


@dataclass(frozen=True)
class RuntimeCell:
    device: str
    block_len: int
    candidates: int
    seconds: dict[str, dict[str, Stats]]  # runtime -> stage -> per-request time
    speedup_vs_eager: dict[str, Stats]  # eager total / runtime total, per round (> 1: faster than eager)


def _time_rounds(
    runtimes: dict[str, Stage], rounds: int, warmup: int, sync: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    for _ in range(warmup):
        for encode, score in runtimes.values():
            score(encode())
    sync()
    out: dict[str, dict[str, list[float]]] = {r: {s: [] for s in STAGES} for r in runtimes}
    for i in range(rounds):
        for name in rotated(list(runtimes), i):
            encode, score = runtimes[name]
            sync()
            t0 = time.perf_counter()
            cache = encode()
            sync()
            t1 = time.perf_counter()
            score(cache)
            sync()
            t2 = time.perf_counter()
            out[name]["encoder"].append(t1 - t0)
            out[name]["scorer"].append(t2 - t1)
            out[name]["total"].append(t2 - t0)
    return out


def _eager(encoder: UserEncoder, scorer: ItemScorer, t: TorchBatch) -> Stage:
    def score(cache: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        out: Tensor = scorer(*t.scorer_args(), *cache)
        return out

    return partial(encoder, *t.encoder_args()), score


def _ort(pipe: OrtPipeline, req: RequestBatch) -> Stage:
    return partial(pipe.encode, req), partial(pipe.score, req)


@torch.inference_mode()
def run_runtimes(
    model: AstroModel,
    device: torch.device,
    ort_pipelines: dict[str, OrtPipeline],
    grid: Grid,
    progress: Callable[[str], None],
) -> list[RuntimeCell]:
    """``ort_pipelines`` maps a runtime name (``ort_fp32``, ``ort_fp16``) to its graphs; pass none on a GPU."""
    model = model.to(device).eval()
    encoder, scorer = UserEncoder(model, torch.float32).eval(), ItemScorer(model).eval()
    sync = device_sync(device)
    cells = []
    todo = grid.cells(model.cfg)
    for tb, n, req in todo:
        t = req.to_torch(device)
        runtimes: dict[str, Stage] = {EAGER: _eager(encoder, scorer, t)}
        runtimes.update({name: _ort(pipe, req) for name, pipe in ort_pipelines.items()})
        times = _time_rounds(runtimes, grid.rounds, grid.warmup, sync)
        cell = RuntimeCell(
            device=device_label(device),
            block_len=tb,
            candidates=n,
            seconds={r: {s: Stats.of(v) for s, v in st.items()} for r, st in times.items()},
            speedup_vs_eager={r: per_round_ratio(times[EAGER]["total"], times[r]["total"]) for r in ort_pipelines},
        )
        cells.append(cell)
        parts = ", ".join(
            f"{r} {1e3 * st['encoder'].median:.2f}+{1e3 * st['scorer'].median:.2f} ms"
            + (f" (x{cell.speedup_vs_eager[r].median:.2f})" if r in cell.speedup_vs_eager else "")
            for r, st in cell.seconds.items()
        )
        progress(f"  [{len(cells)}/{len(todo)}] {cell.device} Tb={tb} N={n}: {parts}")
    return cells
