"""FLOPs of each graph per request, counted from the config, and the machine's matmul rate.

A multiply-add counts 2 FLOPs. d = d_model, F = ffn_mult, L layers, T tasks, B users,
Nb blocks of Tb slots, S = Nb·Tb user tokens, N candidates. Only matrix products are
counted (embedding gathers, LayerNorm, softmax, GELU and masking are O(tokens·d) or
O(scores) element-wise work and are left out), over the padded shapes the graphs
really compute.

Per layer and token, the dense projections cost QKV 6d² + output 2d² + FFN 4F·d² = (8 + 4F)·d²
(every block has its own weights, the same shapes). A candidate is a token in each of the Nb block
stacks, so the scorer works on B·Nb·N candidate tokens.

* user encoder: L·6·B·S·d² (QKV of every layer: the last layer's keys/values are cached)
  + (L−1)·[(2 + 4F)·B·S·d² (output + FFN) + 4·B·Nb·Tb²·d (QKᵀ and A·V inside each block)]
* item scorer: L·[(8 + 4F)·B·Nb·N·d² + 4·B·N·S·d (candidate x its block's user tokens)] + fusion;
  each candidate's score against its own key is element-wise, not counted
* fusion of one candidate's Nb block outputs: BGF (an attention across the Nb outputs,
  (8 + 4F)·Nb·d² + 4·Nb²·d·H, and the squeeze-excitation gate, 4·Nb·d²; none without BGF); its
  Nb x Nb scores are element-wise products summed per head by a product with the [d, H] head
  indicator and spread back by its transpose, 2·Nb²·d·H each, the figure counted here
  + the head 2·Nb·d² + 2·d·T, for each of the B·N candidates
* dense pass per block over Tb + n tokens (SUMI: n = N; per-pair: n = 1, repeated N times):
  L·[(8 + 4F)·B·Nb·(Tb + n)·d² + 4·B·Nb·(Tb + n)²·d] + fusion of the B·n candidates

The limit is the rate of ``torch.matmul`` on large square fp32 matrices at the benchmark's
thread count: what this machine's BLAS reaches on the friendliest possible shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from bench.runtimes import RuntimeCell
from bench.timing import Stats, no_sync, rate
from bench.turbo import PATHS, TurboCell
from contract.config import AstroConfig
from contract.tensors import USER_ENCODER


def _dense_per_token(cfg: AstroConfig) -> int:
    """(8 + 4F)·d²: QKV, output projection and FFN of one token in one layer."""
    return (8 + 4 * cfg.ffn_mult) * cfg.d_model**2


def _fusion(cfg: AstroConfig, rows: int) -> int:
    """BGF (when on) and the head over ``rows`` candidates' Nb block outputs."""
    d, nb = cfg.d_model, cfg.n_blocks
    bgf = _dense_per_token(cfg) * nb + 4 * nb * nb * d * cfg.n_heads + 4 * nb * d * d if cfg.bgf else 0
    return rows * (bgf + 2 * nb * d * d + 2 * d * cfg.n_tasks)


def encoder_flops(cfg: AstroConfig, batch: int, block_len: int) -> int:
    d, nb, layers = cfg.d_model, cfg.n_blocks, cfg.n_layers
    s = nb * block_len
    qkv = layers * 6 * batch * s * d * d
    rest = (layers - 1) * ((2 + 4 * cfg.ffn_mult) * batch * s * d * d + 4 * batch * nb * block_len**2 * d)
    return qkv + rest


def graph_flops(cfg: AstroConfig, graph: str, block_len: int, candidates: int) -> int:
    """(d)'s count for one request (B = 1) of the served graph named ``graph``."""
    return encoder_flops(cfg, 1, block_len) if graph == USER_ENCODER else scorer_flops(cfg, 1, block_len, candidates)


def scorer_flops(cfg: AstroConfig, batch: int, block_len: int, candidates: int) -> int:
    d, nb, n = cfg.d_model, cfg.n_blocks, candidates
    per_layer = _dense_per_token(cfg) * batch * nb * n + 4 * batch * n * nb * block_len * d
    return cfg.n_layers * per_layer + _fusion(cfg, batch * n)


def dense_flops(cfg: AstroConfig, batch: int, block_len: int, candidates: int) -> int:
    """One dense pass per block over its user tokens and ``candidates`` candidates (the SUMI path)."""
    nb, m = cfg.n_blocks, block_len + candidates
    per_layer = _dense_per_token(cfg) * batch * nb * m + 4 * batch * nb * m * m * cfg.d_model
    return cfg.n_layers * per_layer + _fusion(cfg, batch * candidates)


def path_flops(cfg: AstroConfig, path: str, batch: int, block_len: int, candidates: int) -> int:
    """FLOPs of one request through a TURBO path: ``per_pair``, ``sumi`` or ``split``."""
    if path == "per_pair":
        return candidates * dense_flops(cfg, batch, block_len, 1)
    if path == "sumi":
        return dense_flops(cfg, batch, block_len, candidates)
    if path == "split":
        return encoder_flops(cfg, batch, block_len) + scorer_flops(cfg, batch, block_len, candidates)
    raise ValueError(f"unknown path {path!r}; expected per_pair, sumi or split")


def matmul_rate(
    size: int, repeats: int, device: torch.device, sync: Callable[[], None] = no_sync, min_seconds: float = 0.2
) -> Stats:
    """FLOP/s of ``torch.matmul`` on two fp32 ``size x size`` matrices, at the current thread count."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return rate(partial(torch.matmul, a, b), 2 * size**3, repeats, sync, min_seconds)


@dataclass(frozen=True)
class Efficiency:
    """One timed stage at one shape: its FLOPs over its median time, against the matmul limit."""

    stage: str
    block_len: int
    candidates: int
    gflop: float
    median_ms: float
    gflops_per_s: float
    fraction_of_limit: float


def efficiency_rows(
    cfg: AstroConfig, turbo: Sequence[TurboCell], runtimes: Sequence[RuntimeCell], peak: float
) -> list[Efficiency]:
    """Each timed stage's FLOPs / median time, as a fraction of ``peak`` FLOP/s (B = 1)."""

    def row(stage: str, tb: int, n: int, flops: int, seconds: float) -> Efficiency:
        return Efficiency(stage, tb, n, flops / 1e9, 1e3 * seconds, flops / seconds / 1e9, flops / seconds / peak)

    rows = []
    for c in runtimes:
        tb, n = c.block_len, c.candidates
        for runtime, stages in c.seconds.items():
            rows.append(row(f"{runtime} encoder", tb, n, encoder_flops(cfg, 1, tb), stages["encoder"].median))
            rows.append(row(f"{runtime} scorer", tb, n, scorer_flops(cfg, 1, tb, n), stages["scorer"].median))
    for t in turbo:
        for path in PATHS:
            flops = path_flops(cfg, path, 1, t.block_len, t.candidates)
            rows.append(row(f"torch {path}", t.block_len, t.candidates, flops, t.latency_s[path].median))
    return rows
