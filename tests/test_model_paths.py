"""The three PyTorch execution paths hold together, and the model is total over its inputs.

per_pair (the reference: one dense pass per candidate) == sumi (one dense pass with the
M-FALCON mask) == split (encode_user once, score_candidates on the cache), over a grid of
batch sizes, block lengths and candidate counts with ragged padding, empty blocks and
brand-new users. Then the properties the serving design rests on: a candidate's score
does not depend on the other candidates, the user keys/values do not depend on the
request time (so a response cache can reuse them) while the scores do, the temperature
and both relative biases are live, any int64 id or timestamp is legal input, and the
export wrappers compute what the split path computes.

All on the ``tiny`` preset, seeded; every case draws fresh random inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from model_helpers import SEED, case_rng, perturbed_model, torch_threads

from contract.config import AstroConfig
from model.astro import AstroModel, History, ItemScorer, Request, UserEncoder, signed_log_bucket
from model.random_inputs import random_request

CFG = AstroConfig.from_name("tiny")

# fp32 path parity. The paths compute the same maths in different orders: dense masked
# attention per block over Tb+N keys (per_pair, sumi) vs Nb attentions of size Tb in the
# encoder and candidates against the cached keys in the scorer (split); masked logits sit
# at -3e4 below the rest and their softmax weights underflow to exactly 0, so only rounding
# differs: a few fp32 ulps per op (~1e-7 relative), accumulated over L layers, BGF and the head.
PATH_ATOL = 1e-5
# Candidate independence: the same candidate goes through the same ops whatever its
# neighbours; only the GEMM blocking may change with N: a few ulps per op, amplified through
# L blockwise layers, BGF and the head to ~4e-6 on logits of order 3 (a leak between
# candidates moves them by > 1e-3).
INDEPENDENCE_ATOL = 1e-5
# The fp16 cache rounds keys/values to 11 significant bits (~5e-4 relative); scores are
# probabilities, and the error stays well below 1e-2 after attention averages it.
FP16_CACHE_ATOL = 1e-2


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model() -> AstroModel:
    """Seeded tiny model, perturbed (attention tables too) so that the parity checks are not trivial."""
    return perturbed_model(CFG)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


# ---- per_pair == sumi == split ------------------------------------------------------------

BATCHES = (1, 3, 8)
BLOCK_LENS = (1, 2, 7, CFG.max_block_len)
CANDIDATES = (1, 2, 33, CFG.max_candidates)
PER_PAIR_MAX_PASSES = 512  # per_pair is a Python loop over candidates: beyond this, check a sample of columns
PER_PAIR_SAMPLE = 16


@pytest.mark.parametrize(("batch", "tb", "n"), list(itertools.product(BATCHES, BLOCK_LENS, CANDIDATES)))
def test_paths_agree(model: AstroModel, batch: int, tb: int, n: int) -> None:
    rng = case_rng(batch, tb, n)
    empty = 1 if batch > 1 else int(tb == 1)  # brand-new users in the mix (the whole batch once)
    h, req, cand = random_request(CFG, rng, batch, tb, n, empty_users=empty).to_torch()
    with torch.no_grad():
        split = model.split(h, req, cand)
        sumi = model.sumi(h, req, cand)
        if batch * n <= PER_PAIR_MAX_PASSES:
            cols = torch.arange(n)
        else:  # first, last and a random sample: per_pair scores each column on its own anyway
            pick = rng.choice(np.arange(1, n - 1), size=PER_PAIR_SAMPLE - 2, replace=False)
            cols = torch.from_numpy(np.sort(np.concatenate([[0, n - 1], pick])))
        ref = model.per_pair(h, req, cand[:, cols])
    assert split.shape == sumi.shape == (batch, n, CFG.n_tasks)
    assert torch.isfinite(split).all() and torch.isfinite(sumi).all() and torch.isfinite(ref).all()
    # the comparison must be able to fail: scores really vary across candidates and users
    if batch * n > 4:
        assert float(split.std()) > 0.05, f"degenerate logits (std {float(split.std()):.3g}): the test is vacuous"
    assert max_diff(sumi[:, cols], ref) <= PATH_ATOL, f"sumi vs per_pair: {max_diff(sumi[:, cols], ref):.3g}"
    assert max_diff(split[:, cols], ref) <= PATH_ATOL, f"split vs per_pair: {max_diff(split[:, cols], ref):.3g}"
    assert max_diff(split, sumi) <= PATH_ATOL, f"split vs sumi: {max_diff(split, sumi):.3g}"


@pytest.mark.parametrize("tb", [1, 5, CFG.max_block_len])
def test_brand_new_users(model: AstroModel, tb: int) -> None:
    """No history at all: finite scores, equal on all paths, blind to padding content and request time."""
    batch, n = 4, 9
    r = random_request(CFG, case_rng(tb, 1), batch, tb, n, empty_users=batch)
    assert (r.hist_item_ids == 0).all()
    h, req, cand = r.to_torch()
    # padding slots (item id 0) carry arbitrary behaviours/scenarios/timestamps: they must not count
    noisy = History(
        h.item_ids,
        torch.randint(-5, 10, h.behaviors.shape),
        torch.randint(-5, 10, h.scenarios.shape),
        torch.randint(0, 2_000_000_000, h.timestamps.shape),
    )
    later = Request(req.scenario, req.timestamp + 10**7)
    with torch.no_grad():
        split = model.split(h, req, cand)
        assert torch.isfinite(split).all()
        assert max_diff(model.sumi(h, req, cand), split) <= PATH_ATOL
        assert max_diff(model.per_pair(h, req, cand), split) <= PATH_ATOL
        torch.testing.assert_close(model.split(noisy, later, cand), split, atol=INDEPENDENCE_ATOL, rtol=0)
        torch.testing.assert_close(model.sumi(noisy, later, cand), split, atol=PATH_ATOL, rtol=0)


def test_padding_content_is_ignored(model: AstroModel) -> None:
    """Ragged users: rewriting what sits in padding slots leaves every path's scores unchanged."""
    r = random_request(CFG, case_rng(7), 6, CFG.max_block_len, 20, empty_users=1)
    h, req, cand = r.to_torch()
    pad = h.item_ids == 0
    assert pad.any() and (~pad).any()
    g = torch.Generator().manual_seed(SEED)
    noisy = History(
        h.item_ids,
        torch.where(pad, torch.randint(-5, 10, h.behaviors.shape, generator=g), h.behaviors),
        torch.where(pad, torch.randint(-5, 10, h.scenarios.shape, generator=g), h.scenarios),
        torch.where(pad, torch.randint(0, 2**40, h.timestamps.shape, generator=g), h.timestamps),
    )
    with torch.no_grad():
        for path in (model.split, model.sumi):
            torch.testing.assert_close(path(noisy, req, cand), path(h, req, cand), atol=INDEPENDENCE_ATOL, rtol=0)


# ---- candidate independence (M-FALCON mask) -------------------------------------------------


@pytest.mark.parametrize("path", ["split", "sumi"])
def test_candidate_independence(model: AstroModel, path: str) -> None:
    batch, n = 4, 48
    rng = case_rng(11, len(path))
    r = random_request(CFG, rng, batch, CFG.max_block_len, n, empty_users=1)
    h, req, cand = r.to_torch()
    run = getattr(model, path)
    with torch.no_grad():
        base = run(h, req, cand)
        # added: 300 more candidates around the original ones
        extra = torch.from_numpy(rng.integers(1, 10**12, size=(batch, 300)))
        grown = run(h, req, torch.cat([extra[:, :100], cand, extra[:, 100:]], 1))[:, 100 : 100 + n]
        # removed: keep a random third, scores of the kept ones unchanged
        keep = torch.from_numpy(np.sort(rng.choice(n, size=n // 3, replace=False)))
        shrunk = run(h, req, cand[:, keep])
        # reordered: a random permutation per request
        perm = torch.from_numpy(rng.permutation(n))
        shuffled = run(h, req, cand[:, perm])
        # alone: each candidate scored by itself
        alone = torch.cat([run(h, req, cand[:, i : i + 1]) for i in range(0, n, 7)], 1)
    torch.testing.assert_close(grown, base, atol=INDEPENDENCE_ATOL, rtol=0)
    torch.testing.assert_close(shrunk, base[:, keep], atol=INDEPENDENCE_ATOL, rtol=0)
    torch.testing.assert_close(shuffled, base[:, perm], atol=INDEPENDENCE_ATOL, rtol=0)
    torch.testing.assert_close(alone, base[:, 0:n:7], atol=INDEPENDENCE_ATOL, rtol=0)


def test_duplicate_candidates_score_equal(model: AstroModel) -> None:
    r = random_request(CFG, case_rng(12), 3, 6, 10)
    h, req, cand = r.to_torch()
    dup = torch.cat([cand, cand.flip(1)], 1)
    with torch.no_grad():
        out = model.split(h, req, dup)
    torch.testing.assert_close(out[:, :10], out[:, 10:].flip(1), atol=INDEPENDENCE_ATOL, rtol=0)


# ---- the request time reaches the scores, never the cache -----------------------------------


def test_cache_is_independent_of_request_time(model: AstroModel) -> None:
    """The encoder graph takes no request time; the split path's cache is bit-identical for two
    request times while the scores move: what lets Triton's response cache reuse a user's K/V."""
    r = random_request(CFG, case_rng(20), 4, CFG.max_block_len, 16, empty_users=1)
    h, req, cand = r.to_torch()
    later = Request(req.scenario, req.timestamp + 7 * 86_400)
    assert "request_timestamp" not in UserEncoder.forward.__code__.co_varnames
    with torch.no_grad():
        a, b = model.encode_user(h, req.scenario), model.encode_user(h, later.scenario)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
        for path in (model.split, model.sumi):
            moved = max_diff(path(h, req, cand)[1:], path(h, later, cand)[1:])
            assert moved > 1e-3, f"{path.__name__}: the request time changed no score ({moved:.3g})"


def test_shifting_every_time_changes_nothing(model: AstroModel) -> None:
    """Time enters only as differences: moving history and request by the same offset is a no-op."""
    r = random_request(CFG, case_rng(24), 3, CFG.max_block_len, 12, empty_users=1)
    h, req, cand = r.to_torch()
    shift = 123_456_789
    h2 = History(*h[:3], h.timestamps + shift)
    req2 = Request(req.scenario, req.timestamp + shift)
    with torch.no_grad():
        for path in (model.split, model.sumi):
            assert torch.equal(path(h2, req2, cand), path(h, req, cand))


# ---- temperature and relative biases are live ------------------------------------------------


def test_request_scenario_changes_user_keys(model: AstroModel) -> None:
    """Layer >= 1 keys depend on the scenario through the temperature of the layers before."""
    r = random_request(CFG, case_rng(21), 2, CFG.max_block_len, 5)
    h, _, _ = r.to_torch()
    with torch.no_grad():
        caches = [model.encode_user(h, torch.full((2, 1), s)) for s in range(4)]
    valid = caches[0].mask
    for s in range(1, 4):
        k0, ks = caches[0].keys[:, 1:, :, valid[0]], caches[s].keys[:, 1:, :, valid[0]]
        assert max_diff(k0, ks) > 1e-3, f"request scenario {s} left the layer-1 keys unchanged: tau is dead"
        assert torch.equal(caches[s].keys[:, 0], caches[0].keys[:, 0])  # layer 0 precedes any attention
        assert torch.equal(caches[s].mask, valid)


@pytest.mark.parametrize("part", ["temperature", "fusion_temperature", "position_bias", "time_bias"])
def test_each_part_of_the_attention_is_live(part: str) -> None:
    """Changing one table changes the scores on every path (so a path that skipped it would fail parity)."""
    model = perturbed_model(CFG, SEED + 3)
    r = random_request(CFG, case_rng(25, len(part)), 3, CFG.max_block_len, 8, empty_users=1)
    h, req, cand = r.to_torch()
    with torch.no_grad():
        before = {p: getattr(model, p)(h, req, cand) for p in ("split", "sumi")}
        if part == "temperature":
            assert model.temperature_raw is not None
            model.temperature_raw.add_(1.0)
        elif part == "fusion_temperature":
            assert model.fusion_temperature_raw is not None
            model.fusion_temperature_raw.add_(1.0)
        else:
            for layer in model.layers():
                table = getattr(layer, part)
                table.copy_(table.flip(1))  # same values, other buckets
        for p, old in before.items():
            moved = max_diff(getattr(model, p)(h, req, cand), old)
            assert moved > 1e-4, f"{part} is dead on the {p} path (scores moved {moved:.3g})"


@pytest.mark.parametrize(
    ("x", "bucket"),
    [(0, 7), (1, 8), (-1, 6), (2, 9), (3, 9), (4, 10), (2**6, 14), (10**12, 14), (-(10**12), 0)],
)
def test_signed_log_buckets(x: int, bucket: int) -> None:
    """8 buckets per sign: 0 -> centre, then one bucket per power of two, saturating at 2^6."""
    assert int(signed_log_bucket(torch.tensor([x]), 8)[0]) == bucket


@pytest.mark.parametrize("path", ["split", "sumi"])
def test_gradient_reaches_every_table(path: str) -> None:
    model = perturbed_model(CFG, SEED + 2).train()
    r = random_request(CFG, case_rng(23, len(path)), 4, 6, 8, empty_users=1)
    h, req, cand = r.to_torch()
    # user 0 has no history: with no user keys its candidates attend to themselves alone (softmax
    # weight 1 whatever tau), so its scenario row 1 gets no block-temperature gradient. -7: unknown.
    req = Request(torch.tensor([[1], [0], [2], [-7]]), req.timestamp)
    getattr(model, path)(h, req, cand).square().sum().backward()
    assert model.temperature_raw is not None and model.fusion_temperature_raw is not None
    grad = model.temperature_raw.grad
    assert grad is not None and torch.isfinite(grad).all()
    per_scenario = grad.abs().sum((1, 2, 3))  # [n_scenarios + 1]
    trained = {0, 2, CFG.n_scenarios}
    for s in range(CFG.n_scenarios + 1):
        if s in trained:
            assert per_scenario[s] > 0, f"no gradient reaches the temperature row of scenario {s}"
        else:
            assert per_scenario[s] == 0, f"scenario row {s} got gradient {float(per_scenario[s]):.3g}"
    fusion = model.fusion_temperature_raw.grad
    assert fusion is not None and (fusion.abs().sum(1) > 0).sum() == 4  # every request's scenario row
    for layer in model.layers():
        for table in (layer.position_bias, layer.time_bias):
            assert table is not None and table.grad is not None and float(table.grad.abs().sum()) > 0


# ---- total inputs: any int64 id or timestamp ------------------------------------------------


def test_extreme_inputs_are_finite(model: AstroModel) -> None:
    r = random_request(CFG, case_rng(31), 4, CFG.max_block_len, 16, empty_users=1)
    h, req, cand = r.to_torch()
    valid = h.item_ids != 0
    big = torch.tensor([-(2**62), -1, 2**62, 2**63 - 1, -(2**63) + 1, 10**18])
    pick = torch.randint(0, len(big), h.item_ids.shape)
    h2 = History(
        torch.where(valid, big[pick], 0),
        torch.where(valid, torch.tensor([-5, 10**9, 3, -(2**63)])[pick % 4], h.behaviors),
        torch.where(valid, torch.tensor([10**9, -5, 2**62, 1])[pick % 4], h.scenarios),
        torch.where(valid, torch.tensor([-1, -(10**12), 2 * 10**9, 2**40, 0, -(2**62)])[pick], h.timestamps),
    )
    for scn, ts in [(-5, 0), (10**9, -(10**9)), (2, 2**40), (-(2**63), 2**62), (0, -(2**63))]:
        q = Request(torch.full_like(req.scenario, scn), torch.full_like(req.timestamp, ts))
        c = big[torch.randint(0, len(big), cand.shape)]
        with torch.no_grad():
            split = model.split(h2, q, c)
            sumi = model.sumi(h2, q, c)
        assert torch.isfinite(split).all(), f"non-finite scores at request scenario {scn}, time {ts}"
        assert max_diff(split, sumi) <= PATH_ATOL


def test_equivalent_ids_score_equal(model: AstroModel) -> None:
    """Ids equal modulo item_buckets hash alike; every out-of-range category is one 'unknown' slot."""
    r = random_request(CFG, case_rng(32), 5, CFG.max_block_len, 24, empty_users=1)
    h, req, cand = r.to_torch()
    valid = h.item_ids != 0
    m = CFG.item_buckets
    g = torch.Generator().manual_seed(SEED)
    shift = torch.randint(-(10**9), 10**9, h.item_ids.shape, generator=g)
    shifted_items = h.item_ids + shift * m
    shifted_items = torch.where(shifted_items == 0, h.item_ids + m, shifted_items)  # 0 would turn into padding
    cand_shift = torch.randint(-(10**9), 10**9, cand.shape, generator=g) * m
    unknown = torch.tensor([-5, 10**9, CFG.n_behaviors, 2**62])
    pick = torch.randint(0, len(unknown), h.item_ids.shape, generator=g)
    h_unknown = History(h.item_ids, torch.where(valid, -1, 0), torch.where(valid, -1, 0), h.timestamps)
    h_other_unknown = History(
        torch.where(valid, shifted_items, 0),
        torch.where(valid, unknown[pick], 0),
        torch.where(valid, unknown[pick.flip(-1)], 0),
        h.timestamps,
    )
    with torch.no_grad():
        base = model.split(h, req, cand)
        assert torch.equal(
            model.split(History(torch.where(valid, shifted_items, 0), *h[1:]), req, cand + cand_shift), base
        )
        assert torch.equal(model.split(h, req, cand - m), base)
        a = model.split(h_unknown, Request(torch.full_like(req.scenario, -5), req.timestamp), cand)
        b = model.split(
            h_other_unknown, Request(torch.full_like(req.scenario, 10**9), req.timestamp), cand + cand_shift
        )
        assert torch.equal(a, b)
        assert max_diff(a, base) > 1e-4  # the unknown slot is a real, different embedding


# ---- export wrappers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "tb", "n"), [(1, 1, 1), (3, 7, 40), (8, CFG.max_block_len, 200)])
def test_wrappers_equal_split(model: AstroModel, batch: int, tb: int, n: int) -> None:
    r = random_request(CFG, case_rng(41, batch, tb, n), batch, tb, n, empty_users=1)
    h, req, cand = r.to_torch()
    encoder, scorer = UserEncoder(model).eval(), ItemScorer(model).eval()
    with torch.no_grad():
        keys, values, mask = encoder(*h, req.scenario)
        scores = scorer(cand, req.scenario, req.timestamp, h.timestamps, keys, values, mask)
        expected = torch.sigmoid(model.split(h, req, cand))
    s = CFG.n_blocks * tb
    assert keys.shape == values.shape == (batch, CFG.n_layers, CFG.n_heads, s, CFG.head_dim)
    assert keys.dtype == values.dtype == torch.float32 and mask.dtype == torch.bool and mask.shape == (batch, s)
    assert scores.shape == (batch, n, CFG.n_tasks) and scores.dtype == torch.float32
    assert ((scores > 0) & (scores < 1)).all()
    torch.testing.assert_close(scores, expected, atol=INDEPENDENCE_ATOL, rtol=0)


def test_fp16_cache(model: AstroModel) -> None:
    r = random_request(CFG, case_rng(42), 4, CFG.max_block_len, 64, empty_users=1)
    h, req, cand = r.to_torch()
    with torch.no_grad():
        k32, v32, m32 = UserEncoder(model, torch.float32)(*h, req.scenario)
        k16, v16, m16 = UserEncoder(model, torch.float16)(*h, req.scenario)
        assert k16.dtype == v16.dtype == torch.float16 and m16.dtype == torch.bool
        assert torch.equal(k16, k32.half()) and torch.equal(v16, v32.half()) and torch.equal(m16, m32)
        scorer = ItemScorer(model)
        s32 = scorer(cand, req.scenario, req.timestamp, h.timestamps, k32, v32, m32)
        s16 = scorer(cand, req.scenario, req.timestamp, h.timestamps, k16, v16, m16)
    assert s16.dtype == torch.float32 and torch.isfinite(s16).all()
    assert 0 < max_diff(s16, s32) <= FP16_CACHE_ATOL, f"fp16 cache moved scores by {max_diff(s16, s32):.3g}"


# ---- extreme timestamps and float64 ----


def test_time_difference_of_extreme_timestamps_does_not_wrap(model: AstroModel) -> None:
    r = random_request(CFG, case_rng(51), 2, 4, 8)
    h, req, cand = r.to_torch()
    valid = h.item_ids != 0
    req = Request(req.scenario, torch.full_like(req.timestamp, 2**62))
    ancient = History(*h[:3], torch.where(valid, -(2**62), 0))  # difference 2^63 s: overflows int64
    old = History(*h[:3], torch.where(valid, 2**62 - 2**40, 0))  # 2^40 s: the same last time bucket
    with torch.no_grad():
        assert torch.equal(model.split(ancient, req, cand), model.split(old, req, cand))


def test_split_runs_in_float64() -> None:
    model = perturbed_model(CFG).double()
    h, req, cand = random_request(CFG, case_rng(52), 2, 5, 6).to_torch()
    with torch.no_grad():
        torch.testing.assert_close(model.split(h, req, cand), model.sumi(h, req, cand), atol=1e-12, rtol=0)


def test_block_length_above_the_limit_stays_total() -> None:
    """Only the python target and TensorRT profiles refuse Tb > max_block_len; the graph itself has no
    position table to overrun (positions enter as bucketed distances) and stays total."""
    model = perturbed_model(CFG)
    h, req, cand = random_request(CFG, case_rng(53), 2, CFG.max_block_len + 5, 4).to_torch()
    with torch.no_grad():
        out = model.split(h, req, cand)
        assert max_diff(out, model.sumi(h, req, cand)) <= PATH_ATOL
    assert out.shape == (2, 4, CFG.n_tasks) and torch.isfinite(out).all()


@pytest.mark.parametrize("ablation", [{"bgf": False}, {"relative_bias": False, "dynamic_temperature": False}])
def test_ablations_keep_the_paths_together(ablation: dict[str, bool]) -> None:
    """-BGF and -ATL (the paper's ablations) are configs of the same model: the three paths still agree."""
    torch.manual_seed(SEED)
    model = AstroModel(CFG.replace(**ablation)).eval()
    h, req, cand = random_request(CFG, case_rng(54), 3, 7, 9, empty_users=1).to_torch()
    with torch.no_grad():
        split, ref = model.split(h, req, cand), model.per_pair(h, req, cand)
    assert max_diff(split, ref) <= PATH_ATOL
