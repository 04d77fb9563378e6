"""Fresh random inputs for parity checks, benchmarks and tests: flat histories and request batches.

Two forms, as traffic comes: :func:`random_history`, one user's flat event log (what a caller
sends the client), and :func:`random_request`, a batch already in the graphs' block layout
(a :class:`~contract.request_batch.RequestBatch`). Both cover what real traffic holds: ragged
blocks or histories, empty blocks, users with no history at all, ids of any size (hashing makes
them all legal) and timestamps before the request. numpy only.
"""

from __future__ import annotations

import numpy as np

from contract.blocks import EventHistory
from contract.config import AstroConfig
from contract.request_batch import RequestBatch

NOW = 1_700_000_000  # a fixed "request time" (unix seconds) so runs are reproducible
ITEM_IDS = (1, 10**9)  # [low, high) of a random item id: large and sparse, as in production, never the padding 0
HISTORY_SPAN = 10**8  # seconds (about three years) a random history reaches back from the request


def random_history(
    rng: np.random.Generator,
    n_events: int,
    cfg: AstroConfig,
    *,
    item_ids: tuple[int, int] = ITEM_IDS,
    behaviors: tuple[int, int] | None = None,
    scenarios: tuple[int, int] | None = None,
    timestamps: tuple[int, int] = (NOW - HISTORY_SPAN + 1, NOW),
    chronological: bool = True,
) -> EventHistory:
    """``n_events`` events, each field uniform in its ``[low, high)`` range: behaviour and scenario ids
    inside ``cfg``'s vocabularies unless given, times in the ``HISTORY_SPAN`` seconds before ``NOW``.
    Oldest first, as an event log is kept; ``chronological=False`` leaves them in draw order."""
    behaviors = behaviors or (0, cfg.n_behaviors)
    scenarios = scenarios or (0, cfg.n_scenarios)
    times = rng.integers(*timestamps, size=n_events)
    return EventHistory(
        item_ids=rng.integers(*item_ids, size=n_events).astype(np.int64),
        behaviors=rng.integers(*behaviors, size=n_events).astype(np.int64),
        scenarios=rng.integers(*scenarios, size=n_events).astype(np.int64),
        timestamps=(np.sort(times) if chronological else times).astype(np.int64),
    )


def random_request(
    cfg: AstroConfig,
    rng: np.random.Generator,
    batch: int,
    block_len: int,
    n_candidates: int,
    empty_users: int = 0,
    id_high: int = 10**12,
) -> RequestBatch:
    """A batch ``[batch, Nb, block_len]`` whose first ``empty_users`` users have no history at all."""
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
    ages = np.sort(rng.integers(0, HISTORY_SPAN, size=(batch, nb, tb)), axis=-1)
    timestamps = np.where(valid, NOW - ages, 0)
    return RequestBatch(
        hist_item_ids=items.astype(np.int64),
        hist_behaviors=behaviors.astype(np.int64),
        hist_scenarios=scenarios.astype(np.int64),
        hist_timestamps=timestamps.astype(np.int64),
        request_scenario=rng.integers(0, cfg.n_scenarios, size=(batch, 1)).astype(np.int64),
        request_timestamp=np.full((batch, 1), NOW, dtype=np.int64),
        cand_item_ids=rng.integers(1, id_high, size=(batch, n_candidates)).astype(np.int64),
    )
