"""ASTRO's peers inside the project, trained by the same protocol on the same rows (:mod:`model.train`).

* ``pooled``: a mean-pooled-history deep model (DLRM / YouTube-DNN style). Each history event
  is its item embedding plus its behaviour embedding; the user is the mean of their events
  over the whole merged history (up to ``POOLED_HISTORY`` events, all behaviours, newest
  kept); a candidate is its item embedding (shared with the history's); an MLP on
  ``[user, candidate, user * candidate]`` gives one logit per task.
* ``transformer``: a single-stack transformer over the whole merged history with target
  attention to the candidates (HSTU / SASRec style): ASTRO's own layers, width and depth
  over *one* block of every behaviour (the newest ``TRANSFORMER_HISTORY`` events, as many
  tokens as ASTRO small's blocks together: the whole history of most MovieLens users) instead
  of several behaviour-filtered blocks, and no fusion (one block has nothing to fuse).
  Events attend to each other; each candidate attends to the history and to itself, with
  the relative position/time bias and the learned temperature (HSTU's relative attention
  bias). So it differs from ASTRO only in what the stack sees.

Both take ASTRO's inputs ``(History, Request, candidates) -> logits [B, N, T]``, so the
trainer, the metrics and the evaluation rows are exactly ASTRO's. Only the history tensors
differ (a peer's rows are built for its own block layout); the candidates and labels are
the same rows, which :func:`train_peer` checks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from contract.config import AstroConfig, BlockSpec
from contract.request_batch import History, Request
from model.astro import AstroModel
from model.train import CPU, Run, Splits, TrainParams, load_data, make_deterministic, train_model

PEERS = ("pooled", "transformer")
POOLED_HISTORY = 1024  # events the pooled model averages: the whole history of every ml-100k user but ~10
# events the single stack attends over: as many history tokens as ASTRO small's three blocks of 48 (its
# attention and relative-bias cost grow with the square of the length; 256 cost ~9x ASTRO's on a CPU)
TRANSFORMER_HISTORY = 144


class PooledModel(nn.Module):
    """Mean of (item + behaviour) embeddings over the history, candidate embedding, MLP.

    h: block tensors ``[B, Nb, Tb]`` (every block is pooled together), cand ``[B, N]`` -> logits ``[B, N, T]``."""

    def __init__(self, cfg: AstroConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.item_buckets, d)
        self.behavior_emb = nn.Embedding(cfg.n_behaviors + 1, d)  # +1: the unknown behaviour
        self.drop = nn.Dropout(cfg.dropout)
        self.mlp = nn.Sequential(
            nn.Linear(3 * d, 2 * d),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * d, d),
            nn.GELU(),
            nn.Linear(d, cfg.n_tasks),
        )
        for emb in (self.item_emb, self.behavior_emb):
            nn.init.normal_(emb.weight, std=0.05)

    def forward(self, h: History, request: Request, cand_item_ids: Tensor) -> Tensor:
        beh = h.behaviors
        beh = torch.where((beh >= 0) & (beh < self.cfg.n_behaviors), beh, torch.full_like(beh, self.cfg.n_behaviors))
        x = self.item_emb(torch.remainder(h.item_ids, self.cfg.item_buckets)) + self.behavior_emb(beh)
        valid = (h.item_ids != 0).unsqueeze(-1).to(x.dtype)  # [B, Nb, Tb, 1]
        user = (x * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1.0)  # [B, d]; an empty history: zeros
        c = self.item_emb(torch.remainder(cand_item_ids, self.cfg.item_buckets))  # [B, N, d]
        u = self.drop(user)[:, None].expand_as(c)
        c = self.drop(c)
        out: Tensor = self.mlp(torch.cat([u, c, u * c], -1))
        return out


def peer_config(kind: str, cfg: AstroConfig, history: int | None = None) -> AstroConfig:
    """The config a peer is built and its rows are cut for: ``cfg``'s width, depth, vocabularies and
    regularisation, with one block of every behaviour, ``history`` events long (default: the peer's)."""
    if kind not in PEERS:
        raise ValueError(f"unknown peer {kind!r}; choose one of {list(PEERS)}")
    length = history or (POOLED_HISTORY if kind == "pooled" else TRANSFORMER_HISTORY)
    return cfg.replace(blocks=(BlockSpec(name="all", behaviors=(), max_len=length),), bgf=False)


def build_peer(kind: str, cfg: AstroConfig) -> nn.Module:
    """An untrained peer for the config :func:`peer_config` returned."""
    return PooledModel(cfg) if kind == "pooled" else AstroModel(cfg)


def same_rows(a: Splits, b: Splits) -> bool:
    """Whether two splits hold the same rows (candidates, labels, requests), whatever their histories."""
    return all(
        np.array_equal(getattr(x, f), getattr(y, f))
        for x, y in ((a.train, b.train), (a.valid, b.valid), (a.test, b.test))
        for f in ("cand_item_ids", "labels", "request_timestamp", "request_scenario")
    )


def train_peer(
    kind: str,
    cfg: AstroConfig,
    params: TrainParams,
    data: str = "synthetic",
    n_train: int = 4000,
    n_test: int = 1000,
    device: torch.device = CPU,
    reference: Splits | None = None,
    history: int | None = None,
) -> Run:
    """Train peer ``kind`` at ``cfg``'s width and depth by ASTRO's protocol. With ``reference`` (ASTRO's
    splits of the same seed), refuses rows that differ from them in anything but the history."""
    pcfg = peer_config(kind, cfg, history)
    splits = load_data(data, pcfg, n_train, n_test, params.seed)
    if reference is not None and not same_rows(splits, reference):
        raise RuntimeError(f"peer {kind!r}: its rows differ from ASTRO's (same seed {params.seed}, data {data!r})")
    make_deterministic(params.seed)
    run = train_model(build_peer(kind, pcfg), pcfg, splits, params, f"{kind} on {data}", device)
    run.metrics.update(data=data, peer=kind, seed=params.seed, config=pcfg.model_dump(mode="json"))
    return run
