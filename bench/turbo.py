"""(a) TURBO breakdown: per-pair vs SUMI single pass vs split, in-process PyTorch, same weights.

For each history length Tb and candidate count N, one user (B = 1) with a ragged
history and N candidates goes through the three paths of :class:`~model.astro.AstroModel`:

* ``per_pair``: one full dense pass per candidate (the classic ranking baseline);
* ``sumi``: one dense pass over the user tokens and all N candidates (M-FALCON mask);
* ``split``: ``encode_user`` once, then ``score_candidates`` reusing the cached keys/values.

The paths run interleaved, one call each per round (:mod:`bench.timing`); the speedup of
a path is per-pair time / path time inside each round. Per-pair costs N identical passes,
so beyond ``per_pair_full_max`` candidates it is timed on its first ``per_pair_subset``
candidates in the same round and scaled by N / subset (its time is linear in N: the passes
are independent and equal in shape). The cells where per-pair is timed in full also time the
subset in the same rounds, which checks that scaling: ``scaling_check`` = full time / (subset
time x N / subset), per round (1 = exactly linear).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from bench.timing import Stats, interleaved_rounds, per_round_ratio
from bench.workload import make_request, padding_fraction
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from model.astro import AstroModel

PATHS = ("per_pair", "sumi", "split")
SUBSET = "per_pair_subset"  # per-pair on the first candidates only, timed to check the extrapolation


@dataclass(frozen=True)
class TurboCell:
    device: str
    block_len: int
    candidates: int
    padding: float  # share of history slots that are padding
    per_pair_timed_candidates: int  # N when measured in full, else the subset it was scaled from
    per_pair_method: str  # "measured", or how it was extrapolated
    latency_s: dict[str, Stats]  # per request (B = 1), per path
    candidates_per_s: dict[str, Stats]
    speedup_vs_per_pair: dict[str, Stats]  # per-pair time / path time, per round
    per_pair_scaling_check: Stats | None  # measured per-pair / subset-scaled per-pair, per round (full cells only)


def device_sync(device: torch.device) -> Callable[[], None]:
    """What to wait on before reading the clock: the CUDA stream on a GPU, nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass(frozen=True)
class Grid:
    """The in-process cells (a) and (b) time: every history length Tb with every candidate count N, one user."""

    block_lens: Sequence[int]
    candidates: Sequence[int]
    rounds: int  # timed rounds per cell
    warmup: int  # untimed rounds before them
    seed: int  # of each cell's request

    def cells(self, cfg: AstroConfig) -> list[tuple[int, int, RequestBatch]]:
        """(Tb, N, the request) of every cell, B = 1."""
        return [(tb, n, make_request(cfg, self.seed, 1, tb, n)) for tb in self.block_lens for n in self.candidates]


@torch.inference_mode()
def run_turbo(
    model: AstroModel,
    device: torch.device,
    grid: Grid,
    per_pair_full_max: int,
    per_pair_subset: int,
    progress: Callable[[str], None],
) -> list[TurboCell]:
    model = model.to(device).eval()
    sync = device_sync(device)
    cells = []
    todo = grid.cells(model.cfg)
    for tb, n, req in todo:
        t = req.to_torch(device)
        subset = min(per_pair_subset, n)
        timed = n if n <= per_pair_full_max else subset
        contenders: dict[str, Callable[[], object]] = {
            "per_pair": partial(model.per_pair, t.history, t.request, t.candidates[:, :timed]),
            "sumi": partial(model.sumi, t.history, t.request, t.candidates),
            "split": partial(model.split, t.history, t.request, t.candidates),
        }
        check = timed == n and subset < n
        if check:
            contenders[SUBSET] = partial(model.per_pair, t.history, t.request, t.candidates[:, :subset])
        times = interleaved_rounds(contenders, grid.rounds, grid.warmup, sync)
        times["per_pair"] = [s * n / timed for s in times["per_pair"]]
        scaled = [s * n / subset for s in times.get(SUBSET, [])]
        latency = {p: Stats.of(times[p]) for p in PATHS}
        c = TurboCell(
            device=device_label(device),
            block_len=tb,
            candidates=n,
            padding=padding_fraction(req),
            per_pair_timed_candidates=timed,
            per_pair_method="measured" if timed == n else f"extrapolated: {timed} candidates timed, x{n / timed:g}",
            latency_s=latency,
            candidates_per_s={p: Stats.of([n / s for s in times[p]]) for p in PATHS},
            speedup_vs_per_pair={p: per_round_ratio(times["per_pair"], times[p]) for p in PATHS[1:]},
            per_pair_scaling_check=per_round_ratio(times["per_pair"], scaled) if check else None,
        )
        cells.append(c)
        sp = c.speedup_vs_per_pair
        progress(
            f"  [{len(cells)}/{len(todo)}] {c.device} Tb={tb} N={n}: per-pair {1e3 * latency['per_pair'].median:.1f} ms"
            f" ({c.per_pair_method}), SUMI {1e3 * latency['sumi'].median:.2f} ms (x{sp['sumi'].median:.1f}),"
            f" split {1e3 * latency['split'].median:.2f} ms (x{sp['split'].median:.1f})"
        )
    return cells
