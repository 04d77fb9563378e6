"""Requests, tensors and a served spec for the client's tests, and the stub's score function.

``SPEC`` is the ``tiny`` preset's served spec; ``fake_scores`` is what ``StubTriton`` (tests/triton_stub.py)
answers: a known function of each row's own inputs, so a test can say which scores each request must get.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from client import (
    EventHistory,
    RequestError,
    ScoreRequest,
)
from contract.blocks import build_blocks
from contract.config import AstroConfig
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, HISTORY_INPUTS

REPO = Path(__file__).resolve().parents[1]
SPEC = ServingSpec.from_config(AstroConfig.from_name("tiny"))  # max_batch_size=8, max_candidates=512, Tb<=12
I64 = np.int64
F32 = npt.NDArray[np.float32]
NOW = 1_700_000_000


def history(n: int = 5, seed: int = 0) -> EventHistory:
    rng = np.random.default_rng(seed)
    return EventHistory(
        rng.integers(1, 10_000, n, dtype=I64),
        rng.integers(0, 4, n, dtype=I64),
        rng.integers(0, 4, n, dtype=I64),
        rng.integers(1_600_000_000, 1_700_000_000, n, dtype=I64),
    )


def request(n_cand: int = 3, seed: int = 0, n_hist: int = 5) -> ScoreRequest:
    rng = np.random.default_rng(seed + 1000)
    return ScoreRequest(history(n_hist, seed), rng.integers(1, 1_000_000, n_cand, dtype=I64), seed % 4, NOW)


def call_inputs(batch: int = 2, nb: int = SPEC.n_blocks, tb: int = 4, n: int = 3) -> dict[str, Any]:
    return {
        **{name: np.ones((batch, nb, tb), dtype=I64) for name in HISTORY_INPUTS},
        "request_scenario": np.zeros((batch, 1), dtype=I64),
        "request_timestamp": np.full((batch, 1), NOW, dtype=I64),
        CANDIDATE_INPUT: np.ones((batch, n), dtype=I64),
    }


def raises(match_all: list[str], fn: Any, *args: Any, **kwargs: Any) -> RequestError:
    """``fn`` raises RequestError whose message holds every string of ``match_all``."""
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    for part in match_all:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"
    return info.value


def with_history(h: EventHistory, **fields: Any) -> EventHistory:
    return EventHistory(
        **{f: fields.get(f, getattr(h, f)) for f in ("item_ids", "behaviors", "scenarios", "timestamps")}
    )


H = history(4)  # one fixed four-event history


def cli_request(**override: Any) -> dict[str, Any]:
    h = history(4, seed=7)
    d: dict[str, Any] = {
        "history": {f: getattr(h, f).tolist() for f in ("item_ids", "behaviors", "scenarios", "timestamps")},
        "candidates": [11, 12, 13],
        "scenario": 1,
        "timestamp": NOW,
    }
    d.update(override)
    return d


def fake_scores(inputs: Mapping[str, npt.NDArray[np.int64]], n_tasks: int) -> F32:
    """Scores ``[B, N, n_tasks]`` from each row's own inputs only, as the M-FALCON mask guarantees."""
    cand = inputs[CANDIDATE_INPUT].astype(np.float64)  # [B, N]
    user = inputs["hist_item_ids"].sum(axis=(1, 2)).astype(np.float64)  # [B]
    scen = inputs["request_scenario"][:, 0].astype(np.float64)  # [B]
    task = np.arange(n_tasks, dtype=np.float64)
    s = (cand[:, :, None] % 997) / 997 + (user[:, None, None] % 13) / 130 + scen[:, None, None] / 40 + task / 10
    out: F32 = (s / 3).astype(np.float32)
    return out


def expected_scores(req: ScoreRequest, spec: ServingSpec) -> F32:
    blocks = build_blocks(req.history, spec)
    one = {
        "hist_item_ids": blocks.item_ids[None],
        "request_scenario": np.array([[req.scenario]], dtype=I64),
        CANDIDATE_INPUT: np.asarray(req.candidates, dtype=I64)[None],
    }
    row: F32 = fake_scores(one, spec.n_tasks)[0]
    return row


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


ENCODER_INPUTS = (*HISTORY_INPUTS, "request_scenario")  # what every chunk of one user sends byte for byte
