"""User-encoder time with the config's Nb blocks vs ONE block of the same total length.

    python -m bench.block_attention --preset small --repeats 20 --threads 2

ASTRO's multi-scale partitioning claims attention cost O(n²d/Nb) instead of O(n²d)
: the encoder runs Nb attentions of size Tb, not one of size
Nb·Tb. This measures it. For each Tb and batch size, the same tokens go through
``AstroModel.encode_user`` twice: as ``[B, Nb, Tb]`` under the preset's config, and
as ``[B, 1, Nb·Tb]`` under a second config with a single block of ``max_len = Nb·Tb``
(same d, H, L, same seed). Each model is timed twice, alternating, as the median of
``--repeats`` runs after ``--warmup`` untimed ones, under ``torch.no_grad`` with a fixed
thread count; the lower median is reported, so that a burst of load on a shared machine
does not land on one side only. Ratio = one-block / Nb-block (> 1: the blocks save time).
Only the attention shrinks (by Nb); projections and FFN cost the same in both, so the
ratio is ~1 at small Tb (fixed per-call costs dominate) and approaches Nb as Tb grows
(it can pass Nb a little: Nb small score matrices stay in cache where one big one does not).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from contract.config import PRESETS, AstroConfig, BlockSpec
from contract.program import program_name
from model.astro import AstroModel, History, Request
from model.random_inputs import NOW


@dataclass(frozen=True)
class Row:
    block_len: int  # Tb
    batch: int  # B
    blocks_ms: float  # median encode_user time, Nb blocks of Tb
    one_block_ms: float  # median encode_user time, one block of Nb*Tb

    @property
    def ratio(self) -> float:
        return self.one_block_ms / self.blocks_ms


def one_block_config(cfg: AstroConfig, block_len: int) -> AstroConfig:
    """``cfg`` with its Nb blocks replaced by one block keeping every behaviour, ``max_len = Nb * Tb``."""
    return cfg.replace(
        name=f"{cfg.name}-one-block", blocks=(BlockSpec(name="all", behaviors=(), max_len=cfg.n_blocks * block_len),)
    )


def full_history(rng: np.random.Generator, cfg: AstroConfig, batch: int, block_len: int) -> tuple[History, Request]:
    """Every slot a real event (no padding): ``[B, Nb, Tb]`` int64 history and ``[B, 1]`` request."""
    shape = (batch, cfg.n_blocks, block_len)
    ages = np.sort(rng.integers(0, 10**8, size=shape), axis=-1)  # newest first
    h = History(
        item_ids=torch.from_numpy(rng.integers(1, 10**12, size=shape)),
        behaviors=torch.from_numpy(rng.integers(0, cfg.n_behaviors, size=shape)),
        scenarios=torch.from_numpy(rng.integers(0, cfg.n_scenarios, size=shape)),
        timestamps=torch.from_numpy(NOW - ages),
    )
    req = Request(
        scenario=torch.from_numpy(rng.integers(0, cfg.n_scenarios, size=(batch, 1))),
        timestamp=torch.full((batch, 1), NOW, dtype=torch.int64),
    )
    return h, req


def as_one_block(h: History) -> History:
    """``[B, Nb, Tb]`` -> ``[B, 1, Nb*Tb]``: the same tokens, block after block."""
    return History(*(t.reshape(t.shape[0], 1, -1) for t in h))


@torch.no_grad()
def median_ms(model: AstroModel, h: History, req: Request, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        model.encode_user(h, req.scenario)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.encode_user(h, req.scenario)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run(cfg: AstroConfig, block_lens: list[int], batches: list[int], warmup: int, repeats: int, seed: int) -> list[Row]:
    torch.manual_seed(seed)
    blocks_model = AstroModel(cfg).eval()
    rng = np.random.default_rng(seed)
    rows = []
    total = len(block_lens) * len(batches)
    for tb in block_lens:
        torch.manual_seed(seed)
        one_model = AstroModel(one_block_config(cfg, tb)).eval()
        for batch in batches:
            h, req = full_history(rng, cfg, batch, tb)
            flat = as_one_block(h)
            # interleave the two so that drift in machine load hits both alike
            a = median_ms(blocks_model, h, req, warmup, repeats)
            b = median_ms(one_model, flat, req, warmup, repeats)
            a = min(a, median_ms(blocks_model, h, req, 0, repeats))
            b = min(b, median_ms(one_model, flat, req, 0, repeats))
            rows.append(Row(tb, batch, a, b))
            print(
                f"[{len(rows)}/{total}] Tb={tb} B={batch}: {cfg.n_blocks} blocks {a:.3f} ms, "
                f"one block of {cfg.n_blocks * tb} {b:.3f} ms",
                file=sys.stderr,
                flush=True,
            )
    return rows


def table(cfg: AstroConfig, rows: list[Row], threads: int, repeats: int) -> str:
    nb = cfg.n_blocks
    head = (
        f"user encoder, preset {cfg.name} (d={cfg.d_model} H={cfg.n_heads} L={cfg.n_layers} Nb={nb}), "
        f"torch {torch.__version__}, {threads} threads, median of {repeats} runs, ms"
    )
    cols = f"{'Tb':>5} {'B':>4} {'S=Nb*Tb':>8} {f'{nb} blocks':>10} {'1 block':>10} {'ratio 1/Nb':>10}"
    lines = [head, cols, "-" * len(cols)]
    for r in rows:
        lines.append(
            f"{r.block_len:>5} {r.batch:>4} {nb * r.block_len:>8} {r.blocks_ms:>10.3f} {r.one_block_ms:>10.3f} "
            f"{r.ratio:>10.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog=program_name("bench.block_attention"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="config preset (default: small)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing each model and input")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads, fixed for the whole run")
    p.add_argument(
        "--block-lens",
        type=int,
        nargs="+",
        default=None,
        help="Tb values (default: 16 32 64 and the preset's longest block)",
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="batch sizes (default: 1 4 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the inputs")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0 or a.threads < 1:
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")
    cfg = AstroConfig.from_name(a.preset)
    block_lens = a.block_lens or sorted({t for t in (16, 32, 64) if t < cfg.max_block_len} | {cfg.max_block_len})
    if max(block_lens) > cfg.max_block_len:
        p.error(f"--block-lens: Tb={max(block_lens)} exceeds the preset's max_block_len={cfg.max_block_len}")
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    print(
        f"timing {len(block_lens) * len(a.batches)} shapes, {a.repeats} repeats each ...", file=sys.stderr, flush=True
    )
    rows = run(cfg, block_lens, a.batches, a.warmup, a.repeats, a.seed)
    print(table(cfg, rows, a.threads, a.repeats))


if __name__ == "__main__":
    main()
