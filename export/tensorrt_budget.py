"""The GPU memory budget of the TensorRT engines: the arithmetic that bounds their profiles.

A profile maximum is a promise: TensorRT plans for the largest shape of the profile, and the
engine must fit the GPU at that shape. :func:`memory_estimate` counts the bytes one engine needs
for one request shape (activations of its largest layer plus its I/O, unfused upper bounds);
:func:`fit_to_gpu` lowers the config's ``max_candidates`` (then ``max_batch_size``) until each
engine fits :data:`ENGINE_BUDGET_GIB` at its profile maxima. The lowered limits are the ones the
``tensorrt`` repository publishes, so the client chunks what they exclude. Pure arithmetic: no
TensorRT, no GPU.

Shapes: B batch, Nb = cfg.n_blocks, Tb <= cfg.max_block_len, N <= cfg.max_candidates,
L layers, H heads, dh head dim, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.config import AstroConfig
from contract.tensors import GRAPHS, USER_ENCODER

GiB = 1 << 30
GPU_MEMORY_GIB = 22.5  # a "24 GB" card (L4, A10, RTX 4090) as CUDA counts it: about 23,000 MiB
RUNTIME_RESERVE_GIB = 1.5  # CUDA context, cuBLAS/cuDNN handles, the Triton server itself
DEFAULT_WORKSPACE_GIB = 2.0  # scratch cap per engine (MemoryPoolType.WORKSPACE)
ENGINE_BUDGET_GIB = 6.0  # activations + I/O of one engine at its profile maximum
FLOAT_BYTES = 4  # estimates are for fp32 engines; fp16/bf16 ones need about half the float bytes
INT_BYTES = 8  # int64 ids, timestamps and buckets
# Unfused upper bounds of what one layer keeps alive at once (TensorRT reuses memory across
# layers, so the peak is one layer's working set plus the graph's inputs and outputs):
ATTENTION_COPIES = 4  # logits, relative bias, logits + bias/mask, softmax probabilities
FFN_COPIES = 2  # the FFN hidden layer before and after GELU
HIDDEN_COPIES = 4  # residual stream, its LayerNorm, attention output, FFN output


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one engine needs at one shape (activations of its largest layer plus its I/O)."""

    graph: str
    shape: tuple[int, int, int]  # (B, Tb, N)
    io: int  # graph inputs and outputs, the key/value cache in fp32
    attention: int  # scorer: [B, Nb, H, N, Tb+1] per copy; encoder: [B, Nb, H, Tb, Tb] (+ int64 buckets)
    ffn: int  # [B, Nb, tokens, ffn_mult * d] per copy
    hidden: int  # [B, Nb, tokens, d] per copy (+ the BGF's [B, N, H, Nb, Nb] in the scorer)

    @property
    def total(self) -> int:
        return self.io + self.attention + self.ffn + self.hidden

    def describe(self) -> str:
        b, tb, n = self.shape
        return (
            f"{self.graph} at B={b} Tb={tb} N={n}: {self.total / GiB:.2f} GiB (attention {self.attention / GiB:.2f}, "
            f"FFN {self.ffn / GiB:.2f}, hidden {self.hidden / GiB:.2f}, I/O {self.io / GiB:.2f})"
        )


def memory_estimate(cfg: AstroConfig, graph: str, batch: int, block_len: int, candidates: int) -> MemoryEstimate:
    """Bytes ``graph`` needs for a request of B=``batch`` users, Tb=``block_len``, N=``candidates``."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}")
    b, nb, tb, n = batch, cfg.n_blocks, block_len, candidates
    h, d, f = cfg.n_heads, cfg.d_model, FLOAT_BYTES
    cache = 2 * b * cfg.n_layers * h * nb * tb * cfg.head_dim * f + b * nb * tb  # keys, values, bool mask
    if graph == USER_ENCODER:
        tokens = tb
        io = cache + 4 * b * nb * tb * INT_BYTES + b * INT_BYTES
        attention = ATTENTION_COPIES * b * nb * h * tb * tb * f + 2 * b * nb * tb * tb * INT_BYTES
        bgf = 0
    else:
        tokens = n
        io = cache + b * n * INT_BYTES + b * nb * tb * INT_BYTES + 2 * b * INT_BYTES + b * n * cfg.n_tasks * f
        attention = ATTENTION_COPIES * b * nb * h * n * (tb + 1) * f
        bgf = ATTENTION_COPIES * b * n * h * nb * nb * f
    ffn = FFN_COPIES * b * nb * tokens * cfg.ffn_mult * d * f
    hidden = HIDDEN_COPIES * b * nb * tokens * d * f + bgf
    return MemoryEstimate(graph, (b, tb, n), io, attention, ffn, hidden)


def weight_bytes(cfg: AstroConfig) -> int:
    """fp32 weights of both engines: the item embedding in each graph, per-block layer stacks."""
    layers = cfg.n_blocks * cfg.n_layers * (4 + 2 * cfg.ffn_mult) * cfg.d_model**2  # qkv, out, FFN in/out
    return 2 * FLOAT_BYTES * (cfg.item_buckets * cfg.d_model + layers)


def profile_max_estimates(cfg: AstroConfig) -> dict[str, MemoryEstimate]:
    """Each graph's estimate at the config's (= the profile's) maxima."""
    return {g: memory_estimate(cfg, g, cfg.max_batch_size, cfg.max_block_len, cfg.max_candidates) for g in GRAPHS}


def gpu_bytes(cfg: AstroConfig, workspace_gib: float = DEFAULT_WORKSPACE_GIB) -> int:
    """Everything on the GPU with both engines at their profile maxima at once (the ensemble
    pipelines them): their working sets, one workspace each, the weights and the runtime."""
    engines = sum(e.total for e in profile_max_estimates(cfg).values())
    return int(engines + 2 * workspace_gib * GiB + weight_bytes(cfg) + RUNTIME_RESERVE_GIB * GiB)


def fit_to_gpu(cfg: AstroConfig, budget_gib: float = ENGINE_BUDGET_GIB) -> tuple[AstroConfig, list[str]]:
    """``cfg`` with ``max_candidates`` (then ``max_batch_size``) lowered until each engine's working
    set at the profile maxima fits ``budget_gib``; returns it and a line per change.

    The lowered limits are the ones the ``tensorrt`` repository publishes (the ensemble's
    ``max_candidates`` / ``max_batch_size``), so the client chunks longer candidate lists and
    larger batches: nothing is refused that the old limits allowed. ``max_candidates`` goes down to
    a multiple of 64 (kernel-friendly) before the batch is halved.
    """
    budget = int(budget_gib * GiB)
    batch, n = cfg.max_batch_size, cfg.max_candidates

    def fits(b: int, c: int) -> bool:
        return all(memory_estimate(cfg, g, b, cfg.max_block_len, c).total <= budget for g in GRAPHS)

    while not fits(batch, n):
        if memory_estimate(cfg, "user_encoder", batch, cfg.max_block_len, 1).total <= budget:
            # the largest multiple of 64 (or any N below 64) that fits at this batch
            step = 64 if n > 64 else 1
            best = next((c for c in range(n - n % step or n, 0, -step) if fits(batch, c)), 0)
            if best:
                n = best
                break
        if batch == 1:
            raise ValueError(
                f"config {cfg.name!r} does not fit {budget_gib} GiB per engine even at batch 1 and 1 candidate: "
                + memory_estimate(cfg, "user_encoder", 1, cfg.max_block_len, 1).describe()
            )
        batch = max(1, batch // 2)
    changes = [
        f"{field} {old} -> {new}"
        for field, old, new in (
            ("max_candidates", cfg.max_candidates, n),
            ("max_batch_size", cfg.max_batch_size, batch),
        )
        if old != new
    ]
    if not changes:
        return cfg, []
    return cfg.replace(max_candidates=n, max_batch_size=batch), changes
