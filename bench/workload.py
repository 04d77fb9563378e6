"""The requests every section times: ``random_request`` batches, in numpy (ONNX Runtime, Triton) or torch.

One seed and one shape give the same request to every runtime, so the sections compare
like with like. Requests hold ragged blocks (each block filled to a random length,
newest first, right-padded), as ``model.random_inputs`` documents.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from contract.config import AstroConfig
from model.astro import History, Request
from model.random_inputs import RandomRequest, random_request


class TorchRequest(NamedTuple):
    """A :class:`RandomRequest` as the tensors :class:`~model.astro.AstroModel`'s paths take, on one device."""

    history: History  # each [B, Nb, Tb] int64
    request: Request  # each [B, 1] int64
    candidates: Tensor  # [B, N] int64

    def encoder_args(self) -> tuple[Tensor, ...]:
        """Positional inputs of :class:`~model.astro.UserEncoder` (the ONNX graph's input order)."""
        return (*self.history, self.request.scenario)

    def scorer_args(self) -> tuple[Tensor, ...]:
        """Positional inputs of :class:`~model.astro.ItemScorer` before the cache (the ONNX graph's input order)."""
        return (self.candidates, self.request.scenario, self.request.timestamp, self.history.timestamps)


def make_request(cfg: AstroConfig, seed: int, batch: int, block_len: int, candidates: int) -> RandomRequest:
    """The request of one benchmark cell; the same arguments always give the same arrays."""
    return random_request(cfg, np.random.default_rng(seed), batch, block_len, candidates)


def to_torch(req: RandomRequest, device: torch.device) -> TorchRequest:
    t = {k: torch.from_numpy(v).to(device) for k, v in req.as_dict().items()}
    return TorchRequest(
        History(t["hist_item_ids"], t["hist_behaviors"], t["hist_scenarios"], t["hist_timestamps"]),
        Request(t["request_scenario"], t["request_timestamp"]),
        t["cand_item_ids"],
    )


def padding_fraction(req: RandomRequest) -> float:
    """Share of the ``B·Nb·Tb`` history slots that are padding (item id 0): computed, but worth nothing."""
    return float(np.mean(req.hist_item_ids == 0))
