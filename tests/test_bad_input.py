"""Bad input never crashes or corrupts the server: each malformed request gets a clear error
naming the tensor, the value and the limit, and a valid request afterwards still returns the
exact scores it returned before. Odd-but-legal values (huge or negative ids, unknown
categories, timestamps in the future or negative) are accepted with finite probabilities
equal to the PyTorch reference (hashing and clamping make the graphs total)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import triton_infer

from client import AstroClient, EventHistory, RequestError
from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from contract.tensors import ITEM_SCORER, SCORES_OUTPUT
from export.parity import torch_per_pair
from model.astro import AstroModel
from model.random_inputs import random_request
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
Arrays = dict[str, npt.NDArray[np.generic]]
CFG = AstroConfig.from_name("small")
BASE: Arrays = dict(random_request(CFG, np.random.default_rng(0), 2, 5, 4).as_dict())


def edit(**changes: Callable[[npt.NDArray[np.generic]], npt.NDArray[np.generic]]) -> Arrays:
    return {k: (changes[k](v) if k in changes else v) for k, v in BASE.items()}


# (case, request arrays, explicit wire dtypes, fragments the error message must contain)
BAD: list[tuple[str, Arrays, dict[str, str], tuple[str, ...]]] = [
    ("wrong dtype", edit(hist_item_ids=lambda a: a.astype(np.int32)), {"hist_item_ids": "INT32"},
     ("hist_item_ids", "INT32", "INT64")),
    ("wrong rank", edit(hist_item_ids=lambda a: a[:, 0]), {}, ("hist_item_ids", "[-1,3,-1]", "[2,5]")),
    ("batch mismatch", edit(cand_item_ids=lambda a: a[:1]), {}, ("batch size does not match",)),
    ("block count != Nb", {k: (v[:, :2] if k.startswith("hist") else v) for k, v in BASE.items()}, {},
     ("[-1,3,-1]", "[2,2,5]")),
    ("Tb above max", dict(random_request(CFG, np.random.default_rng(1), 1, CFG.max_block_len + 1, 3).as_dict()), {},
     ("hist_item_ids", f"= {CFG.max_block_len + 1}", f"1..{CFG.max_block_len}")),
    ("Tb differs across history inputs", edit(hist_behaviors=lambda a: a[:, :, :4]), {},
     ("hist_behaviors", "= 4", "'hist_item_ids' has 5")),
    ("N above max", dict(random_request(CFG, np.random.default_rng(2), 1, 3, CFG.max_candidates + 1).as_dict()), {},
     ("cand_item_ids", f"= {CFG.max_candidates + 1}", f"1..{CFG.max_candidates}")),
    ("N = 0", edit(cand_item_ids=lambda a: a[:, :0]), {}, ("cand_item_ids", "= 0", f"1..{CFG.max_candidates}")),
    ("empty batch", {k: v[:0] for k, v in BASE.items()}, {}, ("byte size mismatch",)),
    ("batch above max", dict(random_request(CFG, np.random.default_rng(3), CFG.max_batch_size + 1, 3, 2).as_dict()),
     {}, (f"must be <= {CFG.max_batch_size}",)),
    ("request dims", edit(request_scenario=lambda a: np.zeros((2, 2), np.int64)), {}, ("request_scenario", "[-1,1]")),
    ("missing input", {k: v for k, v in BASE.items() if k != "cand_item_ids"}, {}, ("missing required input",
                                                                                  "cand_item_ids")),
]  # fmt: skip


@pytest.fixture(scope="module")
def good_scores(triton: TritonServer) -> npt.NDArray[np.generic]:
    return triton_infer(triton.grpc_url, BASE)[SCORES_OUTPUT]


@pytest.mark.parametrize(("case", "arrays", "dtypes", "fragments"), BAD, ids=[b[0] for b in BAD])
def test_bad_request_is_rejected_and_server_keeps_serving(
    triton: TritonServer,
    good_scores: npt.NDArray[np.generic],
    case: str,
    arrays: Arrays,
    dtypes: dict[str, str],
    fragments: tuple[str, ...],
) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as info:
        triton_infer(triton.grpc_url, arrays, dtypes=dtypes)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (case, info.value)
    for fragment in fragments:
        assert fragment in info.value.message(), (case, fragment, info.value.message())
    assert triton.is_running()
    np.testing.assert_array_equal(triton_infer(triton.grpc_url, BASE)[SCORES_OUTPUT], good_scores)


def scorer_arrays(block_len: int, user_tokens: int) -> Arrays:
    """Inputs of ``item_scorer`` called on its own: 3 candidates, zero keys/values over ``user_tokens`` tokens."""
    kv = np.zeros((1, CFG.n_layers, CFG.n_heads, user_tokens, CFG.head_dim), np.float32)
    return {
        "cand_item_ids": np.ones((1, 3), np.int64),
        "request_scenario": np.zeros((1, 1), np.int64),
        "request_timestamp": np.zeros((1, 1), np.int64),
        "hist_timestamps": np.zeros((1, CFG.n_blocks, block_len), np.int64),
        "user_keys": kv,
        "user_values": kv.copy(),
        "user_mask": np.ones((1, user_tokens), np.bool_),
    }


def test_composing_model_called_directly_with_inconsistent_cache(triton: TritonServer) -> None:
    """item_scorer is reachable on its own: keys/values/mask that disagree on S are refused."""
    arrays = scorer_arrays(2, 2 * CFG.n_blocks)
    arrays["user_mask"] = np.ones((1, 2 * CFG.n_blocks + 1), np.bool_)
    with pytest.raises(grpcclient.InferenceServerException, match=r"user_mask.*has user tokens S = Nb\*Tb = 7"):
        triton_infer(triton.grpc_url, arrays, model=ITEM_SCORER)


def planted(name: str, index: tuple[int, ...], value: float) -> Arrays:
    arrays = scorer_arrays(2, 2 * CFG.n_blocks)
    arrays[name][index] = value
    return arrays


# (case, item_scorer inputs, fragments the INVALID_ARGUMENT message must contain)
SCORER_BAD: list[tuple[str, Arrays, tuple[str, ...]]] = [
    ("keys' S disagrees with hist_timestamps' Tb", scorer_arrays(2, 4),
     ("'user_keys' has 4", "'hist_timestamps' has 2", f"must be {2 * CFG.n_blocks}")),
    ("NaN in keys", planted("user_keys", (0, 1, 2, 3, 4), np.nan), ("'user_keys'", "non-finite value nan",
                                                                     "[0, 1, 2, 3, 4]")),
    ("Inf in values", planted("user_values", (0, 0, 1, 5, 0), -np.inf), ("'user_values'", "non-finite value -inf")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "arrays", "fragments"), SCORER_BAD, ids=[b[0] for b in SCORER_BAD])
def test_composing_model_called_directly_refuses_inconsistent_or_non_finite_cache(
    triton: TritonServer,
    good_scores: npt.NDArray[np.generic],
    case: str,
    arrays: Arrays,
    fragments: tuple[str, ...],
) -> None:
    """item_scorer is reachable on its own: a cache whose token axis is not Nb*Tb of hist_timestamps (ONNX
    Runtime would fail with an INTERNAL error) or holding NaN/Inf (NaN scores) is refused, naming the tensor."""
    assert np.isfinite(
        triton_infer(triton.grpc_url, scorer_arrays(2, 2 * CFG.n_blocks), model=ITEM_SCORER)[SCORES_OUTPUT]
    ).all()
    with pytest.raises(grpcclient.InferenceServerException) as info:
        triton_infer(triton.grpc_url, arrays, model=ITEM_SCORER)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (case, info.value)
    for fragment in fragments:
        assert fragment in info.value.message(), (case, fragment, info.value.message())
    np.testing.assert_array_equal(triton_infer(triton.grpc_url, BASE)[SCORES_OUTPUT], good_scores)


ODD: list[tuple[str, Arrays]] = [
    ("negative and huge ids", edit(hist_item_ids=lambda a: np.where(a != 0, -a * 2**20, 0),
                                   cand_item_ids=lambda a: np.full_like(a, 2**63 - 1))),
    ("unknown behaviours and scenarios", edit(hist_behaviors=lambda a: a + 10**9, hist_scenarios=lambda a: a - 99,
                                              request_scenario=lambda a: a * 0 - 7)),
    ("future history events", edit(hist_timestamps=lambda a: a + 10**8)),
    ("negative timestamps", edit(hist_timestamps=lambda a: a * 0 - 5, request_timestamp=lambda a: a * 0 - 1)),
    ("extreme request time", edit(request_timestamp=lambda a: a * 0 + 2**62)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "arrays"), ODD, ids=[o[0] for o in ODD])
def test_odd_but_legal_values_score_like_pytorch(
    triton: TritonServer, small_model: AstroModel, case: str, arrays: Arrays
) -> None:
    served = triton_infer(triton.grpc_url, arrays)[SCORES_OUTPUT]
    ref = torch_per_pair(small_model, RequestBatch(**arrays))
    assert np.isfinite(served).all() and ((served > 0) & (served < 1)).all(), case
    np.testing.assert_allclose(served, ref, atol=1e-5, rtol=0, err_msg=case)


def test_client_rejects_before_sending(triton: TritonServer) -> None:
    history = EventHistory.from_lists([5, 6], [0, 1], [0, 0], [1_699_999_000, 1_699_999_500])
    with AstroClient(triton.grpc_url) as client:
        with pytest.raises(RequestError, match=r"candidates.*empty"):
            client.score(history, [], 0, 1_700_000_000)
        with pytest.raises(RequestError, match=r"timestamp.*-3"):
            client.score(history, [1, 2], 0, -3)
        assert client.score(history, [1, -3], 0, 1_700_000_000).shape == (2, CFG.n_tasks)  # signed ids are legal
        bad = EventHistory(np.array([1, 2]), np.array([0]), np.array([0, 0]), np.array([1, 2]))
        with pytest.raises(RequestError, match="behaviors"):
            client.score(bad, [1], 0, 1_700_000_000)
        assert client.score(history, [1, 2, 3], 0, 1_700_000_000).shape == (3, CFG.n_tasks)
