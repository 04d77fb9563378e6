"""What the model-side tests share: the seed, torch's thread count, per-case random streams and
perturbed models. Tests import it as a sibling module (``from model_helpers import ...``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from contract.config import AstroConfig
from model.astro import AstroModel

SEED = 20250214  # the model-side tests' fixed seed; each case draws its own stream from it (case_rng)


def case_rng(*key: int) -> np.random.Generator:
    """A fresh, reproducible stream per test case: the same key always gives the same draws."""
    return np.random.default_rng([SEED, *key])


@contextmanager
def torch_threads(n: int, seed: int | None = SEED) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (restored after) and torch's global generator seeded.

    Model tests use tiny tensors: more threads buy little and spin-wait when the cores are busy (CI has 2)."""
    if seed is not None:
        torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def perturbed_model(cfg: AstroConfig, seed: int = SEED, scale: float = 0.15, attention: bool = True) -> AstroModel:
    """A seeded model in eval mode whose weights are moved off their init by ``scale``·N(0, 1).

    At init the relative biases are zero, the temperatures sit near sqrt(dh) and the embeddings are
    small, so every path would agree even with a bias or temperature misapplied, and a load that
    re-initialised the weights would go unseen. With ``attention`` the temperatures also spread
    (tau over ~[1.3, 7] around sqrt(dh) = 4 on ``tiny``) and the bias tables get unit size, so a wrong
    block, mask, bias bucket or temperature shows up in the logits.
    """
    torch.manual_seed(seed)
    model = AstroModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
        if attention:
            for raw in (model.temperature_raw, model.fusion_temperature_raw):
                if raw is None:
                    raise ValueError(f"{cfg.name}: no learned temperature to spread (dynamic_temperature=False)")
                raw.add_(torch.randn(raw.shape, generator=gen))
            for layer in model.layers():
                if layer.position_bias is None or layer.time_bias is None:
                    raise ValueError(f"{cfg.name}: no relative bias tables to fill (relative_bias=False)")
                layer.position_bias.normal_(0.0, 1.0, generator=gen)
                layer.time_bias.normal_(0.0, 1.0, generator=gen)
    return model
