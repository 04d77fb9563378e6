"""Fresh random requests in the graphs' tensor layout, for parity tests and benchmarks.

Covers what real traffic holds: ragged blocks (each user fills each block to a random
length, newest first, right-padded), empty blocks, users with no history at all,
ids of any size (hashing makes them all legal) and timestamps before the request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contract.blocks import EventHistory, stack_blocks
from contract.config import AstroConfig
from contract.tensors import CACHE_TENSORS, GRAPH_IO

I64 = npt.NDArray[np.int64]
NOW = 1_700_000_000  # a fixed "request time" (unix seconds) so runs are reproducible


@dataclass(frozen=True)
class RandomRequest:
    """Named like the ensemble inputs; arrays carry the batch axis."""

    hist_item_ids: I64  # [B, Nb, Tb]
    hist_behaviors: I64
    hist_scenarios: I64
    hist_timestamps: I64
    request_scenario: I64  # [B, 1]
    request_timestamp: I64
    cand_item_ids: I64  # [B, N]

    @classmethod
    def from_history(
        cls, history: EventHistory, candidates: npt.ArrayLike, scenario: int, timestamp: int, cfg: AstroConfig
    ) -> RandomRequest:
        """One user's flat history as a batch-1 request, cut into blocks by the client's own helper."""
        b = stack_blocks([history], cfg)
        return cls(
            b.item_ids,
            b.behaviors,
            b.scenarios,
            b.timestamps,
            np.array([[scenario]], np.int64),
            np.array([[timestamp]], np.int64),
            np.asarray(candidates, np.int64).reshape(1, -1),
        )

    def as_dict(self) -> dict[str, I64]:
        return dict(self.__dict__)

    def graph_inputs(self, graph: str) -> dict[str, I64]:
        """The request inputs ``graph`` takes (a composing model's cache inputs excluded), by the contract."""
        names = set(GRAPH_IO[graph][0]) - set(CACHE_TENSORS)
        return {k: v for k, v in self.as_dict().items() if k in names}


def random_request(
    cfg: AstroConfig,
    rng: np.random.Generator,
    batch: int,
    block_len: int,
    n_candidates: int,
    empty_users: int = 0,
    id_high: int = 10**12,
) -> RandomRequest:
    """A batch whose first ``empty_users`` users have no history at all."""
    nb, tb = cfg.n_blocks, block_len
    lengths = rng.integers(0, tb + 1, size=(batch, nb))  # ragged, 0 = empty block
    lengths[:empty_users] = 0
    if empty_users < batch:  # at least one full block among the users with history
        lengths[rng.integers(empty_users, batch), rng.integers(0, nb)] = tb
    valid = np.arange(tb)[None, None, :] < lengths[:, :, None]  # [B, Nb, Tb]
    items = np.where(valid, rng.integers(1, id_high, size=(batch, nb, tb)), 0)
    behaviors = np.where(valid, rng.integers(0, cfg.n_behaviors, size=(batch, nb, tb)), 0)
    scenarios = np.where(valid, rng.integers(0, cfg.n_scenarios, size=(batch, nb, tb)), 0)
    # newest first: ages grow along the block, from seconds to years
    ages = np.sort(rng.integers(0, 10**8, size=(batch, nb, tb)), axis=-1)
    timestamps = np.where(valid, NOW - ages, 0)
    return RandomRequest(
        hist_item_ids=items.astype(np.int64),
        hist_behaviors=behaviors.astype(np.int64),
        hist_scenarios=scenarios.astype(np.int64),
        hist_timestamps=timestamps.astype(np.int64),
        request_scenario=rng.integers(0, cfg.n_scenarios, size=(batch, 1)).astype(np.int64),
        request_timestamp=np.full((batch, 1), NOW, dtype=np.int64),
        cand_item_ids=rng.integers(1, id_high, size=(batch, n_candidates)).astype(np.int64),
    )
