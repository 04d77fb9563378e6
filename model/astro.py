"""ASTRO in PyTorch: embeddings, block attention with dynamic temperature, M-FALCON scoring.

Three execution paths share one set of weights (DESIGN.md section 2):

* ``per_pair``  -- every candidate scored by its own full pass over ``[user tokens; candidate]``
  (the classic ranking baseline and the reference);
* ``sumi``      -- one pass over ``[user tokens; all candidates]`` with the M-FALCON mask;
* ``split``     -- :meth:`AstroModel.encode_user` once, then :meth:`AstroModel.score_candidates`
  reusing the cached keys/values.

The reference paths (per-pair, SUMI) run plain dense attention over the concatenated
sequence with an explicit mask and per-key temperature. The split path runs Nb real
attentions of size Tb and folds the temperature into the cached keys. Shapes:
B batch, Nb blocks, Tb block length, S = Nb*Tb user tokens, N candidates, L layers,
H heads, dh head dim, T tasks.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.config import AstroConfig

TIME_LIMIT = 2**62 - 1  # timestamps are clamped to ±TIME_LIMIT s so that their difference fits in int64
# Additive logit of a padding key: exp(-3e4 - max) is 0 in fp32, and it is finite in fp16 (range
# +-65504), so a fully masked row (an empty block) softmaxes to finite weights on every precision.
MASK_LOGIT = -3e4


class History(NamedTuple):
    """One batch of block tensors, each ``[B, Nb, Tb]`` int64."""

    item_ids: Tensor
    behaviors: Tensor
    scenarios: Tensor
    timestamps: Tensor  # unix seconds


class Request(NamedTuple):
    """Per-user request context, each ``[B, 1]`` int64."""

    scenario: Tensor
    timestamp: Tensor


class UserCache(NamedTuple):
    """What the user encoder hands the item scorer: the only state shared between graphs."""

    keys: Tensor  # [B, L, H, S, dh], temperature already folded in
    values: Tensor  # [B, L, H, S, dh]
    mask: Tensor  # [B, S] bool, True = a real event


class AstroLayer(nn.Module):
    """Pre-norm transformer layer; user tokens and candidates share its weights."""

    def __init__(self, cfg: AstroConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [..., T, d] -> q, k, v each [..., H, T, dh]."""
        *lead, t, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(*lead, t, 3, self.n_heads, self.head_dim)
        qkv = qkv.movedim(-3, 0).transpose(-3, -2)  # (3, ..., H, T, dh)
        return qkv[0], qkv[1], qkv[2]

    def finish(self, x: Tensor, y: Tensor) -> Tensor:
        """Residual + FFN. x: [..., T, d]; y: attention output [..., H, T, dh]."""
        y = y.transpose(-3, -2).flatten(-2)  # [..., T, d]
        x = x + self.drop(self.out(y))
        ffn: Tensor = self.drop(self.ffn(self.norm2(x)))
        return x + ffn


class AstroModel(nn.Module):
    age_edges: Tensor

    def __init__(self, cfg: AstroConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, nb = cfg.d_model, cfg.n_blocks
        self.item_emb = nn.Embedding(cfg.item_buckets, d)
        self.behavior_emb = nn.Embedding(cfg.n_behaviors + 1, d)  # +1: the "unknown behaviour" slot
        self.event_scenario_emb = nn.Embedding(cfg.n_scenarios + 1, d)  # +1: unknown scenario
        self.request_scenario_emb = nn.Embedding(cfg.n_scenarios + 1, d)
        self.age_emb = nn.Embedding(cfg.age_buckets, d)
        self.pos_emb = nn.Embedding(nb * cfg.max_block_len, d)  # per-block recency position, row b*max_len + t
        self.target_marker = nn.Parameter(torch.zeros(d))
        # f(request scenario, block) -> raw temperature per layer and head; block index Nb is the
        # candidates' own key. tau = tau_min + softplus(raw); raw starts near tau = 1.
        tau0 = math.log(math.expm1(1.0 - cfg.tau_min))
        self.temperature_raw = nn.Parameter(
            tau0 + 0.1 * torch.randn(cfg.n_scenarios + 1, nb + 1, cfg.n_layers, cfg.n_heads)
        )
        self.layers = nn.ModuleList(AstroLayer(cfg) for _ in range(cfg.n_layers))
        self.stack = cast(list[AstroLayer], list(self.layers))  # typed view of the same modules
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.n_tasks))
        # age bucket = number of edges <= age: 0 s -> 0, 1 s -> 1, 2-3 s -> 2, ..., >= 2^(A-2) s -> A-1.
        # Integer comparisons, so every runtime buckets identically (no float log2 at bucket edges).
        edges = torch.tensor([2**i for i in range(cfg.age_buckets - 1)], dtype=torch.int64)
        self.register_buffer("age_edges", edges, persistent=False)
        for emb in (
            self.item_emb,
            self.behavior_emb,
            self.event_scenario_emb,
            self.request_scenario_emb,
            self.age_emb,
            self.pos_emb,
        ):
            nn.init.normal_(emb.weight, std=0.05)
        nn.init.normal_(self.target_marker, std=0.05)

    # ---- input handling: total functions, no value can index out of range -------------
    def hash_items(self, ids: Tensor) -> Tensor:
        """Any int64 id -> bucket in [0, item_buckets) (floor modulo, so negatives too)."""
        return torch.remainder(ids, self.cfg.item_buckets)

    @staticmethod
    def _category(x: Tensor, n: int) -> Tensor:
        """Ids in [0, n) pass; anything else maps to the learned unknown slot n."""
        return torch.where((x >= 0) & (x < n), x, torch.full_like(x, n))

    @staticmethod
    def _mask_bias(valid: Tensor) -> Tensor:
        """Additive attention bias: 0 for a real key, MASK_LOGIT for padding (same shape as ``valid``)."""
        zero = torch.zeros((), dtype=torch.float32, device=valid.device)
        return torch.where(valid, zero, torch.full_like(zero, MASK_LOGIT))

    def temperatures(self, request_scenario: Tensor) -> Tensor:
        """request_scenario [B, 1] -> tau [B, Nb+1, L, H] (index Nb: the candidate's own key)."""
        raw = self.temperature_raw[self._category(request_scenario[:, 0], self.cfg.n_scenarios)]
        return self.cfg.tau_min + F.softplus(raw)

    def embed_history(self, h: History, request: Request) -> tuple[Tensor, Tensor]:
        """-> user tokens [B, Nb, Tb, d] and valid mask [B, Nb, Tb]."""
        nb, tb = h.item_ids.shape[-2:]
        # clamped: a Tb above max_block_len (which only the python target and TensorRT profiles refuse)
        # reuses the last position row instead of reading another block's rows or past the table
        slot = torch.arange(tb, device=h.item_ids.device).clamp(max=self.cfg.max_block_len - 1)
        pos = torch.arange(nb, device=slot.device)[:, None] * self.cfg.max_block_len + slot  # [Nb, Tb]
        now = request.timestamp.clamp(-TIME_LIMIT, TIME_LIMIT)[:, :, None]  # [B, 1, 1]
        age = (now - h.timestamps.clamp(-TIME_LIMIT, TIME_LIMIT)).clamp(min=0)  # [B, Nb, Tb]; future events -> 0
        age_bucket = (age[..., None] >= self.age_edges).sum(-1)  # [B, Nb, Tb]
        x = (
            self.item_emb(self.hash_items(h.item_ids))
            + self.behavior_emb(self._category(h.behaviors, self.cfg.n_behaviors))
            + self.event_scenario_emb(self._category(h.scenarios, self.cfg.n_scenarios))
            + self.age_emb(age_bucket)
            + self.pos_emb(pos)
        )
        return x, h.item_ids != 0

    def embed_candidates(self, cand_item_ids: Tensor, request: Request) -> Tensor:
        """cand_item_ids [B, N] -> candidate tokens [B, N, d]."""
        scn: Tensor = self.request_scenario_emb(self._category(request.scenario, self.cfg.n_scenarios))  # [B, 1, d]
        items: Tensor = self.item_emb(self.hash_items(cand_item_ids))
        return items + scn + self.target_marker

    def logits(self, c: Tensor) -> Tensor:
        """Final candidate states [B, N, d] -> per-task logits [B, N, T]."""
        out: Tensor = self.head(self.final_norm(c))
        return out

    # ---- split path: encoder once, scorer reusing the cache ----------------------------
    def encode_user(self, h: History, request: Request) -> UserCache:
        """Block attention: Nb attentions of size Tb. Returns keys/values [B, L, H, S, dh]."""
        x, valid = self.embed_history(h, request)
        b, nb, tb, _ = x.shape
        tau = self.temperatures(request.scenario)[:, :nb]  # [B, Nb, L, H]
        key_bias = self._mask_bias(valid)[:, :, None, None, :]  # [B, Nb, 1, 1, Tb], built once for all layers
        scale = 1.0 / math.sqrt(self.cfg.head_dim)
        keys, values = [], []
        for li, layer in enumerate(self.stack):
            q, k, v = layer.qkv_heads(x)  # [B, Nb, H, Tb, dh]
            k = k / tau[:, :, li, :, None, None]  # fold the temperature into the keys
            keys.append(k)
            values.append(v)
            if li == len(self.stack) - 1:
                break  # the last layer's user outputs feed nothing: only its keys/values are needed
            att = ((q * scale) @ k.transpose(-1, -2) + key_bias).softmax(-1)  # [B, Nb, H, Tb, Tb]
            x = layer.finish(x, att @ v)
        # (B, Nb, H, Tb, dh) per layer -> (B, L, H, Nb*Tb, dh), block-major token order
        k_all = torch.stack(keys, 1).transpose(2, 3).reshape(b, len(keys), self.cfg.n_heads, nb * tb, -1)
        v_all = torch.stack(values, 1).transpose(2, 3).reshape(b, len(values), self.cfg.n_heads, nb * tb, -1)
        return UserCache(k_all, v_all, valid.reshape(b, nb * tb))

    def score_candidates(self, cand_item_ids: Tensor, request: Request, cache: UserCache) -> Tensor:
        """M-FALCON: each candidate attends to all valid user tokens and itself. -> logits [B, N, T]."""
        c = self.embed_candidates(cand_item_ids, request)  # [B, N, d]
        tau_self = self.temperatures(request.scenario)[:, -1]  # [B, L, H]
        s = cache.mask.shape[1]
        bias = self._mask_bias(cache.mask).to(c.dtype)  # [B, S], built once for all layers
        user_bias = bias.repeat_interleave(self.cfg.n_heads, 0)[:, None, :]  # [B*H, 1, S]
        scale = 1.0 / math.sqrt(self.cfg.head_dim)
        for li, layer in enumerate(self.stack):
            q, k, v = layer.qkv_heads(c)  # [B, H, N, dh]
            q = q * scale  # on [B, H, N, dh], not on the N x S logits
            k = k / tau_self[:, li, :, None, None]
            uk = cache.keys[:, li].to(q.dtype)  # [B, H, S, dh]; an fp16 cache is computed on in fp32
            uv = cache.values[:, li].to(q.dtype)
            # [B*H, N, S]: bias + q @ ukᵀ in one fused call (scale and mask cost no extra pass)
            att_user = torch.baddbmm(user_bias, q.flatten(0, 1), uk.flatten(0, 1).transpose(-1, -2))
            att_self = (q * k).sum(-1, keepdim=True)  # [B, H, N, 1]: each candidate's own key
            att = torch.cat([att_user.view(*q.shape[:3], s), att_self], -1).softmax(-1)  # [B, H, N, S+1]
            y = att[..., :s] @ uv + att[..., s:] * v  # [B, H, N, dh]
            c = layer.finish(c, y)
        return self.logits(c)

    def split(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        return self.score_candidates(cand_item_ids, request, self.encode_user(h, request))

    # ---- reference paths: dense attention over [user tokens; candidates] ---------------
    def dense(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        """One pass over S + N tokens with the explicit M-FALCON mask. -> logits [B, N, T]."""
        xu, valid = self.embed_history(h, request)
        b, nb, tb, d = xu.shape
        n = cand_item_ids.shape[1]
        s = nb * tb
        x = torch.cat([xu.reshape(b, s, d), self.embed_candidates(cand_item_ids, request)], 1)  # [B, S+N, d]
        dev = x.device
        block_of = torch.cat([torch.arange(nb, device=dev).repeat_interleave(tb), torch.full((n,), nb, device=dev)])
        is_user = block_of < nb  # [S+N]
        key_valid = torch.cat([valid.reshape(b, s), torch.ones(b, n, dtype=torch.bool, device=dev)], 1)  # [B, S+N]
        same_block = block_of[:, None] == block_of[None, :]  # [S+N, S+N]
        eye = torch.eye(s + n, dtype=torch.bool, device=dev)
        # user rows: own block only; candidate rows: every user token, and themselves only
        allowed = torch.where(is_user[:, None], same_block, is_user[None, :] | eye)  # [S+N, S+N]
        allowed = allowed[None] & key_valid[:, None, :]  # [B, S+N, S+N]
        tau = self.temperatures(request.scenario)  # [B, Nb+1, L, H]
        tau_key = tau[:, block_of]  # [B, S+N, L, H]: the temperature of each key's block
        scale = 1.0 / math.sqrt(self.cfg.head_dim)
        for li, layer in enumerate(self.stack):
            q, k, v = layer.qkv_heads(x)  # [B, H, S+N, dh]
            att = (q @ k.transpose(-1, -2)) * scale  # [B, H, S+N, S+N]
            att = att / tau_key[:, :, li].transpose(1, 2)[:, :, None, :]  # per-key temperature
            att = att.masked_fill(~allowed[:, None], MASK_LOGIT).softmax(-1)
            x = layer.finish(x, att @ v)
        return self.logits(x[:, s:])

    def sumi(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        """Single user, multiple items: all N candidates in one dense pass."""
        return self.dense(h, request, cand_item_ids)

    def per_pair(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        """The baseline: one full pass per candidate (user tokens re-encoded every time)."""
        outs = [self.dense(h, request, cand_item_ids[:, i : i + 1]) for i in range(cand_item_ids.shape[1])]
        return torch.cat(outs, 1)


class UserEncoder(nn.Module):
    """Export wrapper: the user-encoder graph with flat, named tensor inputs."""

    def __init__(self, model: AstroModel, cache_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model, self.cache_dtype = model, cache_dtype

    def forward(
        self,
        hist_item_ids: Tensor,  # [B, Nb, Tb] int64
        hist_behaviors: Tensor,
        hist_scenarios: Tensor,
        hist_timestamps: Tensor,
        request_scenario: Tensor,  # [B, 1] int64
        request_timestamp: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        cache = self.model.encode_user(
            History(hist_item_ids, hist_behaviors, hist_scenarios, hist_timestamps),
            Request(request_scenario, request_timestamp),
        )
        return cache.keys.to(self.cache_dtype), cache.values.to(self.cache_dtype), cache.mask


class ItemScorer(nn.Module):
    """Export wrapper: the item-scoring graph; returns probabilities [B, N, T]."""

    def __init__(self, model: AstroModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        cand_item_ids: Tensor,  # [B, N] int64
        request_scenario: Tensor,  # [B, 1] int64
        user_keys: Tensor,  # [B, L, H, S, dh] cache dtype
        user_values: Tensor,
        user_mask: Tensor,  # [B, S] bool
    ) -> Tensor:
        request = Request(request_scenario, torch.zeros_like(request_scenario))  # the scorer needs no time
        logits = self.model.score_candidates(cand_item_ids, request, UserCache(user_keys, user_values, user_mask))
        return torch.sigmoid(logits)
