"""The PyTorch paths on a CUDA GPU: per-pair == SUMI == split on the device, and the device
split path against the CPU reference on the same weights and inputs.

Skipped, with the reason, where PyTorch sees no CUDA device (CI and the CPU machines).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from contract.config import AstroConfig
from contract.request_batch import RequestBatch
from model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from model.random_inputs import random_request

pytestmark = pytest.mark.cuda
SEED = 20251124
# Same maths in another order on the same device: fp32 rounding, as on the CPU (tests/test_model_paths.py).
DEVICE_PATH_ATOL = 1e-5
# CUDA vs CPU: cuBLAS may run fp32 GEMMs with other blockings and fused kernels; TF32 is off
# (torch's default for matmul), so the error stays at fp32 rounding amplified through the layers.
CUDA_VS_CPU_ATOL = 1e-4


@pytest.fixture(scope="module")
def device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU visible to PyTorch (none here: torch.cuda.is_available() is False)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")


def request(cfg: AstroConfig, seed: int, batch: int, tb: int, n: int) -> RequestBatch:
    print(f"seed {SEED}/{seed}")
    return random_request(cfg, np.random.default_rng([SEED, seed]), batch, tb, n, empty_users=1)


@pytest.mark.parametrize(("batch", "tb", "n"), list(itertools.product((1, 4), (1, 9, 48), (1, 33, 300))))
def test_paths_agree_on_cuda(device: torch.device, batch: int, tb: int, n: int) -> None:
    model = load_checkpoint(DEFAULT_CHECKPOINT).to(device)
    h, req, cand = request(model.cfg, batch * 1000 + tb * 10 + n, batch, tb, n).to_torch(device)
    with torch.no_grad():
        split, sumi = model.split(h, req, cand), model.sumi(h, req, cand)
        ref = model.per_pair(h, req, cand[:, :16])
    assert torch.isfinite(split).all()
    assert float((split - sumi).abs().max()) <= DEVICE_PATH_ATOL
    assert float((split[:, :16] - ref).abs().max()) <= DEVICE_PATH_ATOL


@pytest.mark.parametrize(("batch", "tb", "n"), [(1, 1, 1), (3, 20, 64), (16, 48, 1024)])
def test_cuda_split_matches_cpu(device: torch.device, batch: int, tb: int, n: int) -> None:
    cpu_model = load_checkpoint(DEFAULT_CHECKPOINT)
    gpu_model = load_checkpoint(DEFAULT_CHECKPOINT).to(device)
    r = request(cpu_model.cfg, batch + tb + n, batch, tb, n)
    with torch.no_grad():
        on_cpu = cpu_model.split(*r.to_torch())
        on_gpu = gpu_model.split(*r.to_torch(device)).cpu()
    diff = float((on_cpu - on_gpu).abs().max())
    assert diff <= CUDA_VS_CPU_ATOL, f"CUDA vs CPU split logits differ by {diff:.3g}"
