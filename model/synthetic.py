"""A synthetic multi-scenario, multi-behaviour music world with planted structure.

Each user has a long-term taste and a short-term taste (what they play lately);
items have latent factors and a popularity. Histories are drawn from the tastes,
behaviours (play/like/share/skip) from the affinity, and labels from a
scenario-dependent mix of the two tastes: on ``radio`` the short-term taste
dominates, on ``search`` and ``playlist`` the long-term one. So a model has to
read the right block for the right scenario to beat popularity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contract.blocks import EventHistory, build_blocks
from contract.config import AstroConfig
from contract.request_batch import RequestBatch

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
NOW = 1_700_000_000
DAY = 86_400
# the world's own vocabularies; a dataset re-labels them with the ids of the config it is built for
BEHAVIORS = ("play", "like", "share", "skip")
SCENARIOS = ("home", "search", "radio", "playlist")
RECENT_EVENTS = 16  # the newest events of a history follow the short-term taste
# label weight of (long-term taste, short-term taste) per request scenario
SCENARIO_MIX = {"home": (1.0, 1.0), "search": (1.6, 0.2), "radio": (0.2, 1.8), "playlist": (1.4, 0.4)}


@dataclass(frozen=True)
class WorldSpec:
    n_items: int = 1000
    factor_dim: int = 8
    max_events: int = 160
    candidates_per_user: int = 32
    seed: int = 0


@dataclass(frozen=True)
class Dataset(RequestBatch):
    """Rows ready to batch: U users' requests (history blocks ``[U, Nb, Tb_max]``, request ``[U, 1]``,
    candidates ``[U, N]``) with a label per candidate and task."""

    labels: F32  # [U, N, T]

    def __post_init__(self) -> None:
        super().__post_init__()
        u, n = self.cand_item_ids.shape
        if self.labels.dtype != np.float32 or self.labels.ndim != 3 or self.labels.shape[:2] != (u, n):
            raise ValueError(
                f"Dataset.labels: {self.labels.dtype} shape {self.labels.shape}, expected float32 [U, N, T] "
                f"with U, N = {u}, {n} from cand_item_ids"
            )


class SyntheticWorld:
    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        self.item_factors = rng.normal(0.0, 1.0, (spec.n_items, spec.factor_dim)) / np.sqrt(spec.factor_dim)
        self.item_pop = rng.normal(0.0, 1.0, spec.n_items)  # log-popularity
        # item ids are large and sparse, as in production; the graph hashes them
        # drawn from the range, not from np.arange(1, 10**9) (an 8 GB array): the same ids, the same rng state
        self.item_ids = (rng.choice(10**9 - 1, size=spec.n_items, replace=False) + 1).astype(np.int64)

    def _pick(self, rng: np.random.Generator, taste: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.int64]:
        logits = self.item_pop + 3.0 * self.item_factors @ taste
        p = np.exp(logits - logits.max())
        return rng.choice(self.spec.n_items, size=k, p=p / p.sum())

    def user(self, rng: np.random.Generator) -> tuple[EventHistory, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """-> history, long-term taste, short-term taste."""
        d = self.spec.factor_dim
        long_t = rng.normal(0.0, 1.0, d)
        short_t = 0.3 * long_t + rng.normal(0.0, 1.0, d)
        n = 0 if rng.random() < 0.03 else int(rng.integers(1, self.spec.max_events + 1))  # 3% brand-new users
        ages = np.sort(rng.exponential(30 * DAY, n)).astype(np.int64)  # newest first
        n_recent = min(n, RECENT_EVENTS)
        idx = np.concatenate([self._pick(rng, short_t, n_recent), self._pick(rng, long_t, n - n_recent)])
        taste = np.where(np.arange(n)[:, None] < n_recent, short_t, long_t)
        affinity = np.einsum("nd,nd->n", self.item_factors[idx], taste) * 3.0
        u = rng.random(n)
        behavior = np.where(
            u < _sigmoid(-affinity - 1.0),
            BEHAVIORS.index("skip"),
            np.where(
                u > 1 - _sigmoid(affinity - 2.5),
                BEHAVIORS.index("share"),
                np.where(u > 1 - _sigmoid(affinity - 0.5), BEHAVIORS.index("like"), BEHAVIORS.index("play")),
            ),
        )
        history = EventHistory(
            item_ids=self.item_ids[idx],
            behaviors=behavior.astype(np.int64),
            scenarios=rng.integers(0, len(SCENARIOS), n).astype(np.int64),
            timestamps=(NOW - ages).astype(np.int64),
        )
        return history, long_t, short_t

    def labels(
        self,
        rng: np.random.Generator,
        cand: npt.NDArray[np.int64],
        scenario: int,
        long_t: npt.NDArray[np.float64],
        short_t: npt.NDArray[np.float64],
    ) -> F32:
        """Bernoulli labels [N, 2] for (play_complete, like) of candidate indices ``cand``."""
        w_long, w_short = SCENARIO_MIX[SCENARIOS[scenario]]
        f = self.item_factors[cand]
        play = _sigmoid(3.0 * (w_long * f @ long_t + w_short * f @ short_t) + 0.3 * self.item_pop[cand] - 0.5)
        like = _sigmoid(4.0 * f @ long_t - 2.0)
        p = np.stack([play, like], -1)
        return (rng.random(p.shape) < p).astype(np.float32)

    def dataset(self, cfg: AstroConfig, n_users: int, seed: int) -> Dataset:
        if cfg.n_tasks != 2:
            raise ValueError(f"the synthetic world labels 2 tasks, config has tasks={list(cfg.tasks)}")
        missing = sorted(set(BEHAVIORS) - set(cfg.behaviors)) + sorted(set(SCENARIOS) - set(cfg.scenarios))
        if missing:
            raise ValueError(f"the synthetic world emits {missing}, which the config's vocabularies lack")
        behavior_id = np.array([cfg.behaviors.index(b) for b in BEHAVIORS], np.int64)  # world id -> config id
        scenario_id = np.array([cfg.scenarios.index(s) for s in SCENARIOS], np.int64)
        rng = np.random.default_rng(seed)
        nb, tb, n = cfg.n_blocks, cfg.max_block_len, self.spec.candidates_per_user
        hist = np.zeros((4, n_users, nb, tb), dtype=np.int64)
        scen = rng.integers(0, len(SCENARIOS), (n_users, 1)).astype(np.int64)
        cands = np.zeros((n_users, n), dtype=np.int64)
        labels = np.zeros((n_users, n, 2), dtype=np.float32)
        for u in range(n_users):
            world_history, long_t, short_t = self.user(rng)
            history = EventHistory(
                world_history.item_ids,
                behavior_id[world_history.behaviors],
                scenario_id[world_history.scenarios],
                world_history.timestamps,
            )
            blocks = build_blocks(history, cfg, tb)
            hist[:, u] = (blocks.item_ids, blocks.behaviors, blocks.scenarios, blocks.timestamps)
            # candidates: half by popularity (what a retrieval stage returns), half uniform
            cand = np.concatenate(
                [
                    self._pick(rng, np.zeros(self.spec.factor_dim), n // 2),
                    rng.integers(0, self.spec.n_items, n - n // 2),
                ]
            )
            cands[u] = self.item_ids[cand]
            labels[u] = self.labels(rng, cand, int(scen[u, 0]), long_t, short_t)
        return Dataset(
            hist[0], hist[1], hist[2], hist[3], scenario_id[scen], np.full((n_users, 1), NOW, np.int64), cands, labels
        )


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))
