"""ASTRO in PyTorch: per-block ATL stacks with relative position/time bias, BGF fusion, M-FALCON scoring.

The parts the paper's body states (Climber, CIKM'25, section 3): a separate stack of ATL
layers per sequence block (MSE), ATL logits = q·k + a relative position/time bias divided
by a temperature learned per block and scenario (every layer of every block), and the
bit-wise gating fusion (BGF) of the block outputs. The exact bias and temperature forms,
the fusion's SE module and the head are ours.

Three execution paths share one set of weights:

* ``per_pair`` -- every candidate scored by its own full pass (the classic baseline, the reference);
* ``sumi``     -- one pass per block over ``[block history; all candidates]`` with the M-FALCON mask;
* ``split``    -- :meth:`AstroModel.encode_user` once, then :meth:`AstroModel.score_candidates`
  reusing the cached keys/values.

All of them call one :func:`attention` and differ only in its keys, mask and bias: the
reference paths run it over the concatenated sequence with an explicit mask and bias matrix;
the split path runs Nb attentions of size Tb in the encoder and candidates-against-cache (plus
each candidate's own key) in the scorer. Only the scorer sees the request time: the cached
keys/values depend on the history and the request scenario alone. Shapes: B batch,
Nb blocks, Tb block length, S = Nb*Tb user tokens, N candidates, L layers, H heads,
dh head dim, T tasks, d model width.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.config import AstroConfig
from contract.request_batch import History as History  # the model's inputs, re-exported: the torch view
from contract.request_batch import Request as Request  # of a RequestBatch, declared beside it

TIME_LIMIT = 2**62 - 1  # timestamps are clamped to ±TIME_LIMIT s so that their difference fits in int64
# Additive logit of a padding key: exp(-3e4 - max) is 0 in fp32, and it is finite in fp16 (range
# +-65504), so a fully masked row (an empty block) softmaxes to finite weights on every precision.
MASK_LOGIT = -3e4
CANDIDATE_POSITION = -1  # a candidate sits just before the newest event (slot 0) of every block


class UserCache(NamedTuple):
    """What the user encoder hands the item scorer: the only state shared between graphs."""

    keys: Tensor  # [B, L, H, S, dh], block-major tokens
    values: Tensor  # [B, L, H, S, dh]
    mask: Tensor  # [B, S] bool, True = a real event


def signed_log_bucket(x: Tensor, n: int) -> Tensor:
    """int64 distances -> bucket in [0, 2n-1): n-1 + sign(x) * #{e in 1, 2, 4, ..., 2^(n-2) : e <= |x|}.

    Integer comparisons only, so every runtime buckets identically (no float log2 at the edges). The
    edges run along a new leading axis: n-1 contiguous slabs summed element by element, not a reduction
    over an innermost axis of n-1. Distances past the last edge share its bucket, so they are capped there
    first, which lets the n-1 comparisons run on int32 (half the bytes) whenever the last edge fits."""
    last = 2 ** (n - 2)
    compare = torch.int32 if last < 2**31 else torch.int64
    edges = torch.tensor([2**i for i in range(n - 1)], dtype=compare, device=x.device)
    capped = x.abs().clamp(max=last).to(compare)
    magnitude = (capped >= edges.view(-1, *([1] * x.dim()))).sum(0, dtype=compare).to(torch.int64)
    return n - 1 + torch.sign(x) * magnitude


class OwnKey(NamedTuple):
    """One more key per query, the query's own (an M-FALCON candidate attending to itself)."""

    keys: Tensor  # [..., Tq, dh]
    values: Tensor  # [..., Tq, dh]
    bias: Tensor  # [..., Tq|1, 1] additive logit, over the temperature


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, own: OwnKey | None = None) -> Tensor:
    """The one attention of every path: softmax over the keys of q·kᵀ + bias, applied to v.

    q [..., Tq, dh] is already divided by the temperature; k, v [..., Tk, dh]; ``bias`` is additive and
    broadcasts to [..., Tq, Tk]: the relative position/time bias over the temperature plus
    ``MASK_LOGIT`` on every key the query may not see. The paths differ only in what they pass: the
    encoder a block's tokens with their padding mask, the SUMI path block and candidate tokens with the
    M-FALCON mask, the scorer the cached block tokens plus ``own`` (each candidate's own key, scored
    element-wise rather than as an N x N product of which only the diagonal is allowed). -> [..., Tq, dh]."""
    logits = q @ k.transpose(-1, -2) + bias
    if own is None:
        out: Tensor = logits.softmax(-1) @ v
        return out
    own_logit = (q * own.keys).sum(-1, keepdim=True) + own.bias  # [..., Tq, 1]
    top = torch.maximum(logits.amax(-1, keepdim=True), own_logit)  # the softmax's shift, over both
    weight, own_weight = torch.exp(logits - top), torch.exp(own_logit - top)
    return (weight @ v + own_weight * own.values) / (weight.sum(-1, keepdim=True) + own_weight)


class BlockwiseLinear(nn.Module):
    """Nb independent linear maps, one per block: x [B, Nb, T, i] -> [B, Nb, T, o]."""

    def __init__(self, n_blocks: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default init, per block
        self.weight = nn.Parameter(torch.empty(n_blocks, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_blocks, d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        # a batched MatMul ([B, Nb, T, i] @ [Nb, i, o], broadcast over B): one GEMM per block in every runtime,
        # where einsum lowers to an ONNX Einsum that ONNX Runtime runs through transposes and a generic loop
        return torch.matmul(x, self.weight) + self.bias[:, None, :]


class BlockwiseLayerNorm(nn.Module):
    """LayerNorm with its own affine per block: x [B, Nb, T, d]."""

    def __init__(self, n_blocks: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_blocks, d))
        self.bias = nn.Parameter(torch.zeros(n_blocks, d))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight[:, None, :] + self.bias[:, None, :]


def normed_linear(norm: BlockwiseLayerNorm, linear: BlockwiseLinear, x: Tensor, scale: float = 1.0) -> Tensor:
    """``scale · linear(norm(x))`` with the norm's per-block affine folded into the linear's weights:
    (n·w + b)·W + c = n·(w ⊙ W) + (b·W + c). After the normalisation, one MatMul and one Add instead of
    Mul, Add, MatMul, Add over every token; the folded weights depend on the parameters alone, so a
    runtime computes them once when it loads the graph. x [B, Nb, T, i] -> [B, Nb, T, o]."""
    weight = scale * norm.weight[:, :, None] * linear.weight  # [Nb, i, o]
    bias = scale * (linear.bias + (norm.bias[:, :, None] * linear.weight).sum(1))  # [Nb, o]; element-wise
    return torch.matmul(F.layer_norm(x, x.shape[-1:]), weight) + bias[:, None, :]


SQRT_HALF = math.sqrt(0.5)


def scaled_gelu(u: Tensor) -> Tensor:
    """GELU of √2·u, times √2: gelu(h) = h·(1 + erf(h/√2))/2 = (u + u·erf(u))/√2 with u = h/√2.

    The FFNs feed it u from an input projection scaled by 1/√2 and fold the outer 1/√2 into the output
    projection, both weights-only: three element-wise passes (Erf, Add, Mul) where the exported exact
    GELU takes five (Div, Erf, Add, Mul, Mul), which ONNX Runtime's GELU fusion does not match at opset 18."""
    return u * (1 + torch.erf(u))


class ATLLayer(nn.Module):
    """Layer l of every block's ATL stack (separate weights per block), pre-norm.

    The layer owns the projections, the relative-bias tables and the FFN; the paths of
    :class:`AstroModel` call :func:`attention` between them, each with its own keys and bias."""

    def __init__(self, cfg: AstroConfig) -> None:
        super().__init__()
        d, nb = cfg.d_model, cfg.n_blocks
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.norm1 = BlockwiseLayerNorm(nb, d)
        self.qkv = BlockwiseLinear(nb, d, 3 * d)
        self.out = BlockwiseLinear(nb, d, d)
        self.norm2 = BlockwiseLayerNorm(nb, d)
        self.ffn_in = BlockwiseLinear(nb, d, cfg.ffn_mult * d)
        self.ffn_out = BlockwiseLinear(nb, cfg.ffn_mult * d, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.position_bias: nn.Parameter | None = None
        self.time_bias: nn.Parameter | None = None
        if cfg.relative_bias:
            # learned tables [Nb, buckets, H] over signed log buckets; zero at start (no bias)
            self.position_bias = nn.Parameter(torch.zeros(nb, 2 * cfg.position_buckets - 1, cfg.n_heads))
            self.time_bias = nn.Parameter(torch.zeros(nb, 2 * cfg.time_buckets - 1, cfg.n_heads))

    def qkv_heads(self, x: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, Nb|1, T, d], tau [B, Nb, H] -> q / tau, k, v each [B, Nb, H, T, dh].

        The query carries the temperature (T·dh divisions instead of T·Tk on the logits)."""
        qkv = normed_linear(self.norm1, self.qkv, x)  # [B, Nb, T, 3d]; x may be [B, 1, T, d], one for all blocks
        qkv = qkv.view(*qkv.shape[:3], 3, self.n_heads, self.head_dim)
        qkv = qkv.permute(3, 0, 1, 4, 2, 5)  # (3, B, Nb, H, T, dh)
        return qkv[0] / tau[..., None, None], qkv[1], qkv[2]

    def finish(self, x: Tensor, y: Tensor) -> Tensor:
        """Residual + FFN. x: [B, Nb, T, d]; y: attention output [B, Nb, H, T, dh]."""
        y = y.transpose(2, 3).flatten(-2)  # [B, Nb, T, d]
        x = x + self.drop(self.out(y))
        u = scaled_gelu(normed_linear(self.norm2, self.ffn_in, x, SQRT_HALF))
        ffn = torch.matmul(u, SQRT_HALF * self.ffn_out.weight) + self.ffn_out.bias[:, None, :]
        out: Tensor = x + self.drop(ffn)
        return out

    def relative_bias(self, bucket: Tensor, tau: Tensor) -> Tensor | None:
        """Joint (block, position, time) buckets [B|1, Nb, Tq, Tk] (:meth:`AstroModel.joint_bucket`), tau [B, Nb, H]
        -> (position bias + time bias) / tau, [B, Nb, H, Tq, Tk]; None without relative bias.

        One Gather from one table per layer: the table depends on the weights alone, so a runtime folds
        it into a constant when it loads the graph; only the gather and the temperature are per request."""
        if self.position_bias is None or self.time_bias is None:
            return None
        table = (self.position_bias[:, :, None] + self.time_bias[:, None]).flatten(0, 2)  # [Nb*P*Tm, H]
        return F.embedding(bucket, table).permute(0, 1, 4, 2, 3) / tau[..., None, None]  # a Gather on axis 0


class BitwiseGatingFusion(nn.Module):
    """BGF over one candidate's Nb block outputs: an ATL across blocks (no relative bias, a
    temperature per request scenario and head), then G ⊙ σ(SE(G)) with a squeeze-excitation
    bottleneck over the flattened Nb×d bits. x [B, N, Nb, d] -> [B, N, Nb*d]."""

    def __init__(self, cfg: AstroConfig) -> None:
        super().__init__()
        d, nb = cfg.d_model, cfg.n_blocks
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))
        self.squeeze = nn.Linear(nb * d, d)  # SE: squeeze the Nb*d bits to d, excite back to Nb*d gates
        self.excite = nn.Linear(d, nb * d)

    def across_blocks(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Softmax attention of each block output to the candidate's Nb outputs, every head at once, in the
        tokens' own layout. q (over the temperature), k, v [B, N, Nb, d] -> [B, N, Nb, d].

        Nb is a handful, so the Nb x Nb scores of a head are element-wise products summed over its dh features
        by one matrix product with the 0/1 head indicator [d, H] (and spread back by its transpose): no head
        transposes and no B·N·H separate Nb x dh matrix products, which runtimes run as one small GEMM each."""
        d = q.shape[-1]
        feature_head = torch.arange(d, device=q.device)[:, None] // self.head_dim
        member = (feature_head == torch.arange(self.n_heads, device=q.device)).to(q.dtype)  # [d, H]
        logits = (q[:, :, :, None] * k[:, :, None]) @ member  # [B, N, Nb query, Nb key, H]
        weights = logits.softmax(-2) @ member.T  # over the keys, spread to each head's features: [B, N, Nb, Nb, d]
        return (weights * v[:, :, None]).sum(3)

    def forward(self, x: Tensor, tau: Tensor) -> Tensor:
        """x [B, N, Nb, d], tau [B, H] -> gated block outputs [B, N, Nb*d]."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)  # [B, N, Nb, d] each, head h = features h·dh..(h+1)·dh
        q = q / tau.repeat_interleave(self.head_dim, -1)[:, None, None, :]
        g = x + self.out(self.across_blocks(q, k, v))
        # ffn = (Linear, GELU, Linear) keeps the checkpoints' keys; its GELU runs as scaled_gelu
        ffn_in, ffn_out = cast(nn.Linear, self.ffn[0]), cast(nn.Linear, self.ffn[2])
        u = scaled_gelu(F.linear(self.norm2(g), SQRT_HALF * ffn_in.weight, SQRT_HALF * ffn_in.bias))
        g = torch.flatten(g + F.linear(u, SQRT_HALF * ffn_out.weight, ffn_out.bias), -2)  # G: [B, N, Nb*d]
        gate: Tensor = torch.sigmoid(self.excite(F.relu(self.squeeze(g))))
        return g * gate


class AstroModel(nn.Module):
    def __init__(self, cfg: AstroConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, nb = cfg.d_model, cfg.n_blocks
        self.item_emb = nn.Embedding(cfg.item_buckets, d)
        self.behavior_emb = nn.Embedding(cfg.n_behaviors + 1, d)  # +1: the "unknown behaviour" slot
        self.event_scenario_emb = nn.Embedding(cfg.n_scenarios + 1, d)  # +1: unknown scenario
        self.request_scenario_emb = nn.Embedding(cfg.n_scenarios + 1, d)
        self.target_marker = nn.Parameter(torch.zeros(d))
        self.temperature_raw: nn.Parameter | None = None
        self.fusion_temperature_raw: nn.Parameter | None = None
        if cfg.dynamic_temperature:
            # tau = tau_min + softplus(raw), per (request scenario, block, layer, head); BGF's per
            # (request scenario, head). Starts near sqrt(dh), the fixed scale it replaces.
            raw0 = math.log(math.expm1(math.sqrt(cfg.head_dim) - cfg.tau_min))
            self.temperature_raw = nn.Parameter(
                raw0 + 0.1 * torch.randn(cfg.n_scenarios + 1, nb, cfg.n_layers, cfg.n_heads)
            )
            self.fusion_temperature_raw = nn.Parameter(raw0 + 0.1 * torch.randn(cfg.n_scenarios + 1, cfg.n_heads))
        self.stack = nn.ModuleList(ATLLayer(cfg) for _ in range(cfg.n_layers))
        self.block_norm = BlockwiseLayerNorm(nb, d)
        self.fusion = BitwiseGatingFusion(cfg) if cfg.bgf else None
        self.head = nn.Sequential(nn.Linear(nb * d, d), nn.GELU(), nn.Linear(d, cfg.n_tasks))
        for emb in (self.item_emb, self.behavior_emb, self.event_scenario_emb, self.request_scenario_emb):
            nn.init.normal_(emb.weight, std=0.05)
        nn.init.normal_(self.target_marker, std=0.05)

    def layers(self) -> list[ATLLayer]:
        return [layer for layer in self.stack if isinstance(layer, ATLLayer)]

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
        """request_scenario [B, 1] -> tau [B, Nb, L, H]."""
        if self.temperature_raw is None:
            b, c = request_scenario.shape[0], self.cfg
            return torch.full(
                (b, c.n_blocks, c.n_layers, c.n_heads), math.sqrt(c.head_dim), device=request_scenario.device
            )
        table = self.cfg.tau_min + F.softplus(self.temperature_raw)  # weights only: a constant to the runtime
        return table[self._category(request_scenario[:, 0], self.cfg.n_scenarios)]

    def fusion_temperatures(self, request_scenario: Tensor) -> Tensor:
        """request_scenario [B, 1] -> BGF's tau [B, H]."""
        if self.fusion_temperature_raw is None:
            b, c = request_scenario.shape[0], self.cfg
            return torch.full((b, c.n_heads), math.sqrt(c.head_dim), device=request_scenario.device)
        table = self.cfg.tau_min + F.softplus(self.fusion_temperature_raw)
        return table[self._category(request_scenario[:, 0], self.cfg.n_scenarios)]

    def time_bucket(self, t_query: Tensor, t_key: Tensor) -> Tensor:
        """Signed log bucket of t_query - t_key (seconds), overflow-free."""
        dt = t_query.clamp(-TIME_LIMIT, TIME_LIMIT) - t_key.clamp(-TIME_LIMIT, TIME_LIMIT)
        return signed_log_bucket(dt, self.cfg.time_buckets)

    def position_bucket(self, p_query: Tensor, p_key: Tensor) -> Tensor:
        """Signed log bucket of p_key - p_query (slots; newest first, so > 0 means older)."""
        return signed_log_bucket(p_key - p_query, self.cfg.position_buckets)

    def joint_bucket(self, position_bucket: Tensor, time_bucket: Tensor) -> Tensor:
        """Position and time buckets [B|1, Nb|1, Tq, Tk] -> row of :meth:`ATLLayer.relative_bias`'s table,
        (block · P + position) · Tm + time, [B|1, Nb, Tq, Tk]."""
        p, tm = 2 * self.cfg.position_buckets - 1, 2 * self.cfg.time_buckets - 1
        block = torch.arange(self.cfg.n_blocks, device=time_bucket.device)[:, None, None]  # [Nb, 1, 1]
        return (block * p + position_bucket) * tm + time_bucket

    @staticmethod
    def layer_bias(layer: ATLLayer, bucket: Tensor, tau: Tensor, mask: Tensor) -> Tensor:
        """Layer's relative bias (None: 0) plus the additive ``mask``; the attention's ``bias``."""
        relative = layer.relative_bias(bucket, tau)
        return mask if relative is None else relative + mask

    def embed_history(self, h: History) -> tuple[Tensor, Tensor]:
        """-> user tokens [B, Nb, Tb, d] and valid mask [B, Nb, Tb]. No absolute time or position."""
        x = (
            self.item_emb(self.hash_items(h.item_ids))
            + self.behavior_emb(self._category(h.behaviors, self.cfg.n_behaviors))
            + self.event_scenario_emb(self._category(h.scenarios, self.cfg.n_scenarios))
        )
        return x, h.item_ids != 0

    def embed_candidates(self, cand_item_ids: Tensor, request_scenario: Tensor) -> Tensor:
        """cand_item_ids [B, N] -> candidate tokens [B, N, d]."""
        scn: Tensor = self.request_scenario_emb(self._category(request_scenario, self.cfg.n_scenarios))  # [B, 1, d]
        items: Tensor = self.item_emb(self.hash_items(cand_item_ids))
        return items + scn + self.target_marker

    def fuse(self, blocks_out: Tensor, request_scenario: Tensor) -> Tensor:
        """Per-candidate block outputs [B, Nb, N, d] -> per-task logits [B, N, T]."""
        g = self.block_norm(blocks_out).transpose(1, 2)  # [B, N, Nb, d]
        fused = g.flatten(-2) if self.fusion is None else self.fusion(g, self.fusion_temperatures(request_scenario))
        out: Tensor = self.head(fused)
        return out

    # ---- split path: encoder once, scorer reusing the cache ----------------------------
    def encode_user(self, h: History, request_scenario: Tensor) -> UserCache:
        """Per-block ATL stacks: Nb attentions of size Tb. Returns keys/values [B, L, H, S, dh].

        Takes the history and the request scenario only: the request time never enters."""
        x, valid = self.embed_history(h)
        b, nb, tb, _ = x.shape
        tau = self.temperatures(request_scenario)  # [B, Nb, L, H]
        key_mask = self._mask_bias(valid)[:, :, None, None, :]  # [B, Nb, 1, 1, Tb], built once for all layers
        slot = torch.arange(tb, device=x.device)
        pos_bucket = self.position_bucket(slot[:, None], slot[None, :])  # [Tb, Tb]
        time_bucket = self.time_bucket(h.timestamps[..., :, None], h.timestamps[..., None, :])  # [B, Nb, Tb, Tb]
        bucket = self.joint_bucket(pos_bucket, time_bucket)
        keys, values = [], []
        layers = self.layers()
        for li, layer in enumerate(layers):
            q, k, v = layer.qkv_heads(x, tau[:, :, li])  # [B, Nb, H, Tb, dh]
            keys.append(k)
            values.append(v)
            if li == len(layers) - 1:
                break  # the last layer's user outputs feed nothing: only its keys/values are needed
            x = layer.finish(x, attention(q, k, v, self.layer_bias(layer, bucket, tau[:, :, li], key_mask)))
        # (B, Nb, H, Tb, dh) per layer -> (B, L, H, Nb*Tb, dh), block-major token order
        k_all = torch.stack(keys, 1).transpose(2, 3).reshape(b, len(keys), self.cfg.n_heads, nb * tb, -1)
        v_all = torch.stack(values, 1).transpose(2, 3).reshape(b, len(values), self.cfg.n_heads, nb * tb, -1)
        return UserCache(k_all, v_all, valid.reshape(b, nb * tb))

    def score_candidates(
        self, cand_item_ids: Tensor, request: Request, hist_timestamps: Tensor, cache: UserCache
    ) -> Tensor:
        """M-FALCON per block: in block k's stack a candidate attends to block k's valid history and
        to itself. Its bias to history token j: position j - (-1), time bucket(request time - t_j).

        cand_item_ids [B, N], hist_timestamps [B, Nb, Tb], cache keys [B, L, H, Nb*Tb, dh] -> logits [B, N, T]."""
        b, nb, tb = hist_timestamps.shape
        h, dh = self.cfg.n_heads, self.cfg.head_dim
        # [B, 1, N, d]: the same tokens enter every block's stack; the first projection broadcasts them over
        # the blocks (one LayerNorm, no materialised copy per block) and the first residual widens to [B, Nb, N, d]
        c = self.embed_candidates(cand_item_ids, request.scenario)[:, None]
        tau = self.temperatures(request.scenario)  # [B, Nb, L, H]
        key_mask = self._mask_bias(cache.mask.view(b, nb, 1, 1, tb))  # [B, Nb, 1, 1, Tb]
        slot = torch.arange(tb, device=c.device)
        me = torch.full((1,), CANDIDATE_POSITION, dtype=torch.int64, device=c.device)
        pos_bucket = self.position_bucket(me[:, None], slot[None, :])  # [1, Tb]
        time_bucket = self.time_bucket(request.timestamp[:, :, None, None], hist_timestamps[:, :, None, :])
        bucket = self.joint_bucket(pos_bucket, time_bucket)  # [B, Nb, 1, Tb]
        zero = torch.zeros((1, 1, 1, 1), dtype=torch.int64, device=c.device)  # a candidate to itself: distance 0
        self_bucket = self.joint_bucket(self.position_bucket(zero, zero), self.time_bucket(zero, zero))  # [1, Nb, 1, 1]
        no_mask = torch.zeros((), dtype=c.dtype, device=c.device)
        for li, layer in enumerate(self.layers()):
            q, k, v = layer.qkv_heads(c, tau[:, :, li])  # [B, Nb, H, N, dh]
            uk = cache.keys[:, li].view(b, h, nb, tb, dh).transpose(1, 2).to(q.dtype)  # [B, Nb, H, Tb, dh]
            uv = cache.values[:, li].view(b, h, nb, tb, dh).transpose(1, 2).to(q.dtype)
            own = OwnKey(k, v, self.layer_bias(layer, self_bucket, tau[:, :, li], no_mask))
            c = layer.finish(c, attention(q, uk, uv, self.layer_bias(layer, bucket, tau[:, :, li], key_mask), own))
        return self.fuse(c, request.scenario)

    def split(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        cache = self.encode_user(h, request.scenario)
        return self.score_candidates(cand_item_ids, request, h.timestamps, cache)

    def forward(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        """Training and serving: the split path. -> logits [B, N, T]."""
        return self.split(h, request, cand_item_ids)

    # ---- reference paths: dense attention over [block history; candidates] -------------
    def sumi(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        """Single user, multiple items: one pass per block over its Tb user tokens and all N candidates,
        with the explicit M-FALCON mask. -> logits [B, N, T]."""
        xu, valid = self.embed_history(h)
        b, nb, tb, d = xu.shape
        n = cand_item_ids.shape[1]
        dev = xu.device
        xc = self.embed_candidates(cand_item_ids, request.scenario)[:, None].expand(b, nb, n, d)
        x = torch.cat([xu, xc], 2)  # [B, Nb, Tb+N, d]
        is_user = torch.arange(tb + n, device=dev) < tb  # [Tb+N]
        key_ok = torch.cat([valid, torch.ones(b, nb, n, dtype=torch.bool, device=dev)], 2)  # [B, Nb, Tb+N]
        eye = torch.eye(tb + n, dtype=torch.bool, device=dev)
        # user rows: own block's tokens; candidate rows: the block's user tokens and themselves only
        allowed = torch.where(is_user[:, None], is_user[None, :], is_user[None, :] | eye)  # [Tb+N, Tb+N]
        mask = self._mask_bias(allowed[None, None] & key_ok[:, :, None, :])[:, :, None].to(x.dtype)  # [B, Nb, 1, M, M]
        pos = torch.cat([torch.arange(tb, device=dev), torch.full((n,), CANDIDATE_POSITION, device=dev)])
        times = torch.cat([h.timestamps, request.timestamp[:, :, None].expand(b, nb, n)], 2)  # [B, Nb, Tb+N]
        pos_bucket = self.position_bucket(pos[:, None], pos[None, :])  # [Tb+N, Tb+N]
        bucket = self.joint_bucket(pos_bucket, self.time_bucket(times[..., :, None], times[..., None, :]))
        tau = self.temperatures(request.scenario)  # [B, Nb, L, H]
        for li, layer in enumerate(self.layers()):
            q, k, v = layer.qkv_heads(x, tau[:, :, li])  # [B, Nb, H, Tb+N, dh]
            x = layer.finish(x, attention(q, k, v, self.layer_bias(layer, bucket, tau[:, :, li], mask)))
        return self.fuse(x[:, :, tb:], request.scenario)

    def per_pair(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        """The baseline: one full pass per candidate (user tokens re-encoded every time)."""
        outs = [self.sumi(h, request, cand_item_ids[:, i : i + 1]) for i in range(cand_item_ids.shape[1])]
        return torch.cat(outs, 1)


class UserEncoder(nn.Module):
    """Export wrapper: the user-encoder graph. Its inputs are history and scenario only."""

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
    ) -> tuple[Tensor, Tensor, Tensor]:
        cache = self.model.encode_user(
            History(hist_item_ids, hist_behaviors, hist_scenarios, hist_timestamps), request_scenario
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
        request_timestamp: Tensor,  # [B, 1] int64
        hist_timestamps: Tensor,  # [B, Nb, Tb] int64
        user_keys: Tensor,  # [B, L, H, S, dh] cache dtype
        user_values: Tensor,
        user_mask: Tensor,  # [B, S] bool
    ) -> Tensor:
        logits = self.model.score_candidates(
            cand_item_ids,
            Request(request_scenario, request_timestamp),
            hist_timestamps,
            UserCache(user_keys, user_values, user_mask),
        )
        return torch.sigmoid(logits)
