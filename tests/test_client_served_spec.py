"""The served spec read back from the ensemble's config (the config's own rules), and the served vocabularies:
checked before sending, and the ones the client blocks a history by.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from client_samples import (
    NOW,
    SPEC,
    H,
    history,
    request,
    with_history,
)
from triton_stub import SMALL, StubTriton, start_stub

from client import (
    Allow,
    AstroClient,
    EventHistory,
    RequestError,
    ScoreRequest,
    ServerError,
    spec_from_model_config,
)
from contract.blocks import build_blocks
from contract.serving_spec import ServingSpec
from contract.tensors import CANDIDATE_INPUT, HISTORY_INPUTS

# ---- serving spec from the served config ---------------------------------------------


def triton_config_json(spec: ServingSpec, **override: Any) -> dict[str, Any]:
    """What ``get_model_config(..., as_json=True)`` returns (proto field names, string parameters)."""
    cfg: dict[str, Any] = {
        "name": "astro",
        "platform": "ensemble",
        "max_batch_size": spec.max_batch_size,
        "input": [
            {"name": n, "data_type": "TYPE_INT64"}
            for n in (*HISTORY_INPUTS, "request_scenario", "request_timestamp", CANDIDATE_INPUT)
        ],
        "parameters": {k: {"string_value": v} for k, v in spec.to_parameters().items()},
    }
    cfg.update(override)
    return {"config": cfg}


def test_spec_round_trips_through_the_config_json() -> None:
    assert spec_from_model_config(triton_config_json(SPEC)) == SPEC
    assert spec_from_model_config(triton_config_json(SPEC)["config"]) == SPEC


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"parameters": {}}, "publishes no usable serving spec.*max_batch_size"),
        ({"max_batch_size": 4}, "max_batch_size=4 but parameters say max_batch_size=8"),
        ({"input": [{"name": "hist_item_ids"}]}, "lacks contract inputs"),
    ],
)
def test_bad_served_config_is_a_server_error(override: dict[str, Any], match: str) -> None:
    with pytest.raises(ServerError, match=match):
        spec_from_model_config(triton_config_json(SPEC, **override))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"max_block_len": "4"}, "keeps 12 events but max_block_len=4"),  # the play block keeps 12 > 4
        ({"behaviors": "play,like,skip"}, r"block 'like' keeps behaviours \['share'\] outside behaviors"),
        ({"scenarios": "home,home"}, r"scenarios=\['home', 'home'\] repeats a name"),  # the config's rule
        ({"max_candidates": "0"}, r"max_candidates: Input should be greater than or equal to 1 \(got 0\)"),
        ({"task_names": "like,"}, r"task_names.1: String should have at least 1 character \(got ''\)"),
    ],
)
def test_inconsistent_served_specs_are_refused(change: dict[str, str], match: str) -> None:
    """The served spec holds the config's own rules (and field types), so a server publishing a spec no config
    could have is refused, naming the field and the value."""
    params = {k: {"string_value": v} for k, v in {**SPEC.to_parameters(), **change}.items()}
    with pytest.raises(ServerError, match=match):
        spec_from_model_config(triton_config_json(SPEC, parameters=params))
    (field, value), *_ = change.items()
    with pytest.raises(ValueError, match=field):  # built directly: pydantic's error, naming the field
        ServingSpec(**{**SPEC.__dict__, field: tuple(value.split(",")) if "," in value else int(value)})


def test_served_vocabulary_is_checked_before_sending(stub_server: tuple[StubTriton, str]) -> None:
    stub, url = stub_server
    with AstroClient(url) as c:
        with pytest.raises(RequestError, match=r"^scenario: value 7 is outside the served scenario ids \[0, 4\)"):
            c.score(history(), [1], 7, NOW)
        with pytest.raises(RequestError, match=r"^requests\[1\]\.history\.behaviors: value 9"):
            c.score_batch([request(), ScoreRequest(with_history(H, behaviors=np.array([0, 9, 1, 1])), [1], 0, NOW)])
    assert stub.batch_shapes == []  # nothing was sent
    with AstroClient(url, allow=Allow(unknown_ids=True)) as c:
        assert c.score(history(), [1], 7, NOW).shape == (1, SMALL.n_tasks)


def test_blocks_follow_the_servers_vocabulary() -> None:
    """A server whose model was trained with a reordered behaviour vocabulary: id 0 is "like" there.
    The client learns the vocabulary from the served spec and blocks events by it."""
    reordered = ServingSpec(**{**SMALL.__dict__, "behaviors": ("like", "play", "skip", "share")})
    server, stub, port = start_stub(reordered)
    h = EventHistory.from_lists([10, 11, 12, 13], [0, 1, 2, 3], [0, 0, 0, 0], [NOW - 4, NOW - 3, NOW - 2, NOW - 1])
    try:
        with AstroClient(f"127.0.0.1:{port}") as c:
            assert c.get_spec().behaviors == ("like", "play", "skip", "share")
            c.score(h, [1], 0, NOW)
    finally:
        server.stop(grace=None)
    items = stub.inputs[0]["hist_item_ids"][0]  # [Nb, Tb]: blocks play {play}, like {like, share}, recent (all)
    names = [b.name for b in reordered.blocks]
    assert items[names.index("play")].tolist()[:2] == [11, 0]  # behaviour 1 = "play" on this server
    assert items[names.index("like")].tolist()[:2] == [13, 10]  # 3 = "share", 0 = "like", newest first
    default = build_blocks(h, SMALL).item_ids
    assert default[names.index("play")].tolist()[:2] == [10, 0]  # by the default vocabulary it would differ
