"""The requests every section times: ``random_request`` batches, in numpy (ONNX Runtime, Triton) or torch.

One seed and one shape give the same request to every runtime, so the sections compare
like with like. Requests hold ragged blocks (each block filled to a random length,
newest first, right-padded), as ``model.random_inputs`` documents; ``req.to_torch(device)``
gives the tensors the model's paths take.
"""

from __future__ import annotations

import numpy as np

from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from model.random_inputs import random_request


def make_request(cfg: AstroConfig, seed: int, batch: int, block_len: int, candidates: int) -> RequestBatch:
    """The request of one benchmark cell; the same arguments always give the same arrays."""
    return random_request(cfg, np.random.default_rng(seed), batch, block_len, candidates)


def padding_fraction(req: RequestBatch) -> float:
    """Share of the ``B·Nb·Tb`` history slots that are padding (item id 0): computed, but worth nothing."""
    return float(np.mean(req.hist_item_ids == 0))
