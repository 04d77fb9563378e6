"""The python target's batching: the encoder takes one request per execution, so requests that arrive
together do not move in lock-step through one core of the pipeline (bench (c) measures both forms)."""

from __future__ import annotations

from contract.config import AstroConfig
from contract.tensors import ITEM_SCORER, USER_ENCODER
from export.repository import PYTHON_INSTANCES, composing_config


def test_encoder_prefers_single_requests_and_scorer_merges() -> None:
    cfg = AstroConfig.from_name("tiny")
    encoder = composing_config(cfg, USER_ENCODER, "python", "fp32", 1)
    scorer = composing_config(cfg, ITEM_SCORER, "python", "fp32", 1)
    assert list(encoder.dynamic_batching.preferred_batch_size) == [1]
    assert list(scorer.dynamic_batching.preferred_batch_size) == []  # deeper queues: merging spreads stub costs
    assert [g.count for g in scorer.instance_group] == [PYTHON_INSTANCES[ITEM_SCORER]] == [2]
    for target in ("onnxruntime", "tensorrt"):  # one multi-threaded or GPU instance: batching pays there
        assert list(composing_config(cfg, USER_ENCODER, target, "fp32", 1).dynamic_batching.preferred_batch_size) == []
