"""The paper's headline on our model: training samples/s in SUMI rows vs one (user, item) per row.

    python -m bench.training --preset small --users 8 --candidates 32 --rounds 7
    python -m bench.training --device cuda            # on a CUDA GPU

Same model, same data, same optimiser step. A *sample* is one (user, candidate) pair with
its labels. SUMI rows (single user, multiple items): one row per user holding all its N
candidates, so one step encodes each history once. Per-pair rows: the same B*N samples as
B*N rows of one candidate each, the history repeated per row, as a classic ranking
pipeline logs them. Both formats take the split forward (encoder, then scorer), which is
the computation the SUMI mask defines. Each round times one full training step of each
format (forward, backward, AdamW), in rotating order; the ratio is per round and reported
as median and spread (the paper reports 5.15x for its model and data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.timing import Stats, interleaved_rounds, per_round_ratio
from bench.turbo import device_sync
from contract.config import PRESETS, AstroConfig
from contract.program import program_name
from contract.request_batch import TorchBatch
from model.astro import AstroModel
from model.synthetic import Dataset, SyntheticWorld, WorldSpec


@dataclass(frozen=True)
class TrainingResult:
    preset: str
    device: str
    users: int
    candidates: int
    sumi_samples_per_s: Stats
    per_pair_samples_per_s: Stats
    speedup: Stats  # SUMI samples/s over per-pair samples/s, per round

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "device": self.device,
            "users": self.users,
            "candidates": self.candidates,
            "sumi_samples_per_s": self.sumi_samples_per_s.to_dict(),
            "per_pair_samples_per_s": self.per_pair_samples_per_s.to_dict(),
            "speedup": self.speedup.to_dict(),
        }


Batch = tuple[TorchBatch, torch.Tensor]  # rows as the model takes them (history, request, candidates), labels


def _per_pair_rows(rows: Dataset) -> Dataset:
    """The same samples with one candidate per row: ``[U*N, ...]``, each history repeated N times."""
    n = rows.cand_item_ids.shape[1]
    repeated = rows.take(np.repeat(np.arange(len(rows)), n))
    return dataclasses.replace(
        repeated,
        cand_item_ids=rows.cand_item_ids.reshape(-1, 1),
        labels=rows.labels.reshape(-1, 1, rows.labels.shape[-1]),
    )


def _on(rows: Dataset, device: str) -> Batch:
    return rows.to_torch(device), torch.from_numpy(rows.labels).to(device)


def _step(model: AstroModel, opt: torch.optim.Optimizer, batch: Batch) -> Callable[[], None]:
    (hist, req, cand), labels = batch

    def run() -> None:
        loss = F.binary_cross_entropy_with_logits(model(hist, req, cand), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    return run


def run_training(
    cfg: AstroConfig,
    users: int,
    candidates: int,
    rounds: int,
    warmup: int,
    device: str,
    say: Callable[[str], None] = print,
) -> TrainingResult:
    torch.manual_seed(0)
    model = AstroModel(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # synthetic users as SUMI rows: history [U, Nb, Tb], request [U, 1], candidates [U, N], labels [U, N, T]
    rows = SyntheticWorld(WorldSpec(candidates_per_user=candidates)).dataset(cfg, users, seed=1)
    sumi, per_pair = _on(rows, device), _on(_per_pair_rows(rows), device)
    samples = users * candidates
    say(
        f"  training step, preset {cfg.name} on {device}: {users} SUMI rows x {candidates} candidates "
        f"vs {samples} per-pair rows ({rounds} rounds)"
    )
    times = interleaved_rounds(
        {"sumi": _step(model, opt, sumi), "per_pair": _step(model, opt, per_pair)},
        rounds,
        warmup,
        device_sync(torch.device(device)),
    )
    rate = {k: [samples / t for t in v] for k, v in times.items()}
    result = TrainingResult(
        cfg.name,
        device,
        users,
        candidates,
        Stats.of(rate["sumi"]),
        Stats.of(rate["per_pair"]),
        per_round_ratio(rate["sumi"], rate["per_pair"]),
    )
    say(
        f"  SUMI rows train {result.speedup.median:.2f}x the samples/s of per-pair rows "
        f"(IQR {result.speedup.q1:.2f}-{result.speedup.q3:.2f}; paper: 5.15x)"
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        prog=program_name("bench.training"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="model config preset (default: small)")
    p.add_argument("--users", type=int, default=8, help="users (SUMI rows) per step")
    p.add_argument("--candidates", type=int, default=32, help="candidates per user (per-pair rows = users x this)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (each times one step of both formats)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each format first")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    result = run_training(AstroConfig.from_name(a.preset), a.users, a.candidates, a.rounds, a.warmup, a.device)
    print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    main()
