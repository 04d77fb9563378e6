"""The requests every section times: ``random_request`` batches, in numpy (ONNX Runtime, Triton) or torch.

One seed and one shape give the same request to every runtime, so the sections compare
like with like. Requests hold ragged blocks (each block filled to a random length,
newest first, right-padded), as ``model.random_inputs`` documents.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch import Tensor

from contract.config import AstroConfig
from contract.tensors import GRAPH_IO, ITEM_SCORER, USER_ENCODER
from export.onnx_graphs import GraphPaths
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


class InProcess:
    """The two exported graphs in ONNX Runtime in this process, chained as the ensemble chains them: each graph
    is fed the inputs ``contract.tensors.GRAPH_IO`` names, from the request or from the encoder's outputs.
    Sessions are configured like the served model's (``intra_op_threads``, no spinning)."""

    def __init__(self, paths: GraphPaths, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.user = ort.InferenceSession(str(paths.user_encoder), opts, providers=["CPUExecutionProvider"])
        self.scorer = ort.InferenceSession(str(paths.item_scorer), opts, providers=["CPUExecutionProvider"])
        self.user_io = GRAPH_IO[USER_ENCODER]
        self.scorer_io = GRAPH_IO[ITEM_SCORER]

    def encode(self, req: RandomRequest) -> dict[str, npt.NDArray[np.generic]]:
        inputs, outputs = self.user_io
        feeds = {name: getattr(req, name) for name in inputs}
        return dict(zip(outputs, self.user.run(list(outputs), feeds), strict=True))

    def score(self, req: RandomRequest, cache: dict[str, npt.NDArray[np.generic]]) -> npt.NDArray[np.float32]:
        inputs, outputs = self.scorer_io
        feeds = {name: cache[name] if name in cache else getattr(req, name) for name in inputs}
        scores: npt.NDArray[np.float32] = self.scorer.run(list(outputs), feeds)[0]
        return scores

    def __call__(self, req: RandomRequest) -> npt.NDArray[np.float32]:
        return self.score(req, self.encode(req))
