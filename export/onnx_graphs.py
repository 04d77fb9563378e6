"""The two serving graphs as ONNX: ``user_encoder.onnx`` and ``item_scorer.onnx``.

Batch, block length and candidate count are dynamic up to the config's maxima;
the keys/values cache dtype (fp32 or fp16) is an export option: fp16 halves the
bytes moved between ensemble steps, while all arithmetic stays fp32.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch.export import Dim

from contract.config import AstroConfig
from contract.serving_spec import CACHE_TENSORS, CANDIDATE_INPUT, HISTORY_INPUTS, REQUEST_INPUTS, SCORES_OUTPUT
from model.astro import AstroModel, ItemScorer, UserEncoder

# torch.onnx logs a warning per torchvision op it cannot register; torchvision is not a dependency
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
OPSET = 18  # supported by ONNX Runtime >= 1.14 and TensorRT 10's ONNX parser
CacheDType = Literal["fp32", "fp16"]
CACHE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
USER_ENCODER_INPUTS = (*HISTORY_INPUTS, *REQUEST_INPUTS)
ITEM_SCORER_INPUTS = (CANDIDATE_INPUT, "request_scenario", *CACHE_TENSORS)


@dataclass(frozen=True)
class GraphPaths:
    user_encoder: Path
    item_scorer: Path


def _example_sizes(cfg: AstroConfig) -> tuple[int, int, int]:
    """Example (B, Tb, N) for tracing: >= 2 (torch.export specialises sizes 0 and 1) and unlike any
    static dim or each other (it may treat equal sizes as the same symbol, "duck sizing")."""
    taken = {cfg.n_blocks, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.d_model, cfg.n_tasks}
    chosen: list[int] = []
    for limit in (cfg.max_batch_size, cfg.max_block_len, cfg.max_candidates):
        size = next((v for v in range(2, limit + 1) if v not in taken and v * cfg.n_blocks not in taken), None)
        if size is None:
            raise ValueError(f"cannot trace with a dynamic axis whose maximum is {limit}: raise it to >= 2")
        taken.update({size, size * cfg.n_blocks})
        chosen.append(size)
    return chosen[0], chosen[1], chosen[2]


def _example(cfg: AstroConfig, cache_dtype: torch.dtype) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Example inputs for both graphs. Values do not matter, sizes do, and every input must be its
    own tensor: torch.export treats one tensor passed twice as one aliased input of the graph."""
    b, tb, n = _example_sizes(cfg)
    s = cfg.n_blocks * tb

    def hist() -> torch.Tensor:
        return torch.ones(b, cfg.n_blocks, tb, dtype=torch.int64)

    def req() -> torch.Tensor:
        return torch.ones(b, 1, dtype=torch.int64)

    def kv() -> torch.Tensor:
        return torch.zeros(b, cfg.n_layers, cfg.n_heads, s, cfg.head_dim, dtype=cache_dtype)

    user = (hist(), hist(), hist(), hist(), req(), req())
    scorer = (torch.ones(b, n, dtype=torch.int64), req(), kv(), kv(), torch.ones(b, s, dtype=torch.bool))
    return user, scorer


def export_graphs(
    model: AstroModel,
    out_dir: Path,
    cache_dtype: CacheDType = "fp32",
    progress: Callable[[str], None] = print,
) -> GraphPaths:
    """Export both graphs into ``out_dir``; every file passes onnx.checker and shape inference."""
    cfg = model.cfg
    dtype = CACHE_DTYPES[cache_dtype]
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    batch = Dim("batch", min=1, max=cfg.max_batch_size)
    block_len = Dim("block_len", min=1, max=cfg.max_block_len)
    cands = Dim("candidates", min=1, max=cfg.max_candidates)
    tokens = Dim("user_tokens", min=1, max=cfg.max_user_tokens)
    user_args, scorer_args = _example(cfg, dtype)
    hist_dims = {0: batch, 2: block_len}
    req_dims = {0: batch}
    kv_dims = {0: batch, 3: tokens}
    paths = GraphPaths(out_dir / "user_encoder.onnx", out_dir / "item_scorer.onnx")
    jobs = (
        (
            UserEncoder(model, dtype).eval(),
            user_args,
            USER_ENCODER_INPUTS,
            CACHE_TENSORS,
            (hist_dims,) * 4 + (req_dims,) * 2,
            paths.user_encoder,
        ),
        (
            ItemScorer(model).eval(),
            scorer_args,
            ITEM_SCORER_INPUTS,
            (SCORES_OUTPUT,),
            ({0: batch, 1: cands}, req_dims, kv_dims, kv_dims, {0: batch, 1: tokens}),
            paths.item_scorer,
        ),
    )
    for module, args, inputs, outputs, dyn, path in jobs:
        progress(f"  exporting {path.name} (opset {OPSET}, cache {cache_dtype})")
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter narrates renames of our named axes and deprecations inside torch: not ours to act on
            warnings.filterwarnings("ignore", message=r".*axis name", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=OPSET,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_shapes=dyn,
                external_data=False,
                verbose=False,
            )
        assert program is not None
        program.save(str(path))
        check_graph(path)
    return paths


def check_graph(path: Path) -> onnx.ModelProto:
    """onnx.checker (full) plus strict shape inference; raises on any inconsistency."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
