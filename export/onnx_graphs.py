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
from typing import Any

import onnx
import torch
from torch.export import Dim

from contract.config import AstroConfig
from contract.tensors import (
    BATCH,
    BLOCK_LEN,
    CANDIDATES,
    DTYPES,
    ITEM_SCORER,
    USER_ENCODER,
    USER_TOKENS,
    CacheDType,
    Tensor,
    axis_sizes,
    graph_io,
)
from model.astro import AstroModel, ItemScorer, UserEncoder

# torch.onnx logs a warning per torchvision op it cannot register; torchvision is not a dependency
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
OPSET = 18  # supported by ONNX Runtime >= 1.14 and TensorRT 10's ONNX parser


@dataclass(frozen=True)
class GraphPaths:
    user_encoder: Path
    item_scorer: Path


def _example_sizes(cfg: AstroConfig) -> dict[str, int]:
    """Example axis sizes for tracing: >= 2 (torch.export specialises sizes 0 and 1) and unlike any
    static dim or each other (it may treat equal sizes as the same symbol, "duck sizing")."""
    taken = {cfg.n_blocks, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.d_model, cfg.n_tasks}
    chosen: list[int] = []
    for limit in (cfg.max_batch_size, cfg.max_block_len, cfg.max_candidates):
        size = next((v for v in range(2, limit + 1) if v not in taken and v * cfg.n_blocks not in taken), None)
        if size is None:
            raise ValueError(f"cannot trace with a dynamic axis whose maximum is {limit}: raise it to >= 2")
        taken.update({size, size * cfg.n_blocks})
        chosen.append(size)
    return axis_sizes(cfg, *chosen)


def torch_dtype(name: str) -> torch.dtype:
    """A contract dtype name ("fp16", "int64", ...) as torch's dtype."""
    dtype: torch.dtype = getattr(torch, DTYPES[name].torch)
    return dtype


def _example(tensors: list[Tensor], sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
    """Example inputs. Values do not matter, sizes do, and every input must be its own tensor:
    torch.export treats one tensor passed twice as one aliased input of the graph."""
    return tuple(torch.ones(t.shape(sizes), dtype=torch_dtype(t.dtype.name)) for t in tensors)


def _dynamic_shapes(tensors: list[Tensor], cfg: AstroConfig) -> tuple[dict[int, Any], ...]:
    """torch.export dims from the declarations; S = Nb*Tb is a derived dim of Tb, so the exporter
    knows the cache's token axis and the history's block axis agree."""
    dims: dict[str, Any] = {a.symbol: Dim(a.symbol, min=1, max=a.limit(cfg)) for a in (BATCH, BLOCK_LEN, CANDIDATES)}
    dims[USER_TOKENS.symbol] = cfg.n_blocks * dims[BLOCK_LEN.symbol]
    return tuple({i: dims[a.symbol] for i, a in t.axes.items()} for t in tensors)


def export_graphs(
    model: AstroModel,
    out_dir: Path,
    cache_dtype: CacheDType = "fp32",
    progress: Callable[[str], None] = print,
) -> GraphPaths:
    """Export both graphs into ``out_dir``; every file passes onnx.checker and shape inference."""
    cfg = model.cfg
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    sizes = _example_sizes(cfg)
    paths = GraphPaths(out_dir / "user_encoder.onnx", out_dir / "item_scorer.onnx")
    modules: dict[str, tuple[torch.nn.Module, Path]] = {
        USER_ENCODER: (UserEncoder(model, torch_dtype(cache_dtype)).eval(), paths.user_encoder),
        ITEM_SCORER: (ItemScorer(model).eval(), paths.item_scorer),
    }
    for graph, (module, path) in modules.items():
        inputs, outputs = graph_io(cfg, graph, cache_dtype)
        progress(f"  exporting {path.name} (opset {OPSET}, cache {cache_dtype})")
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter narrates renames of our named axes and deprecations inside torch: not ours to act on
            warnings.filterwarnings("ignore", message=r".*axis name", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = torch.onnx.export(
                module,
                _example(inputs, sizes),
                dynamo=True,
                opset_version=OPSET,
                input_names=[t.name for t in inputs],
                output_names=[t.name for t in outputs],
                dynamic_shapes=_dynamic_shapes(inputs, cfg),
                external_data=False,
                verbose=False,
            )
        if program is None:
            raise RuntimeError(f"torch.onnx.export returned no program for {graph}")
        program.save(str(path))
        check_graph(path)
    return paths


def check_graph(path: Path) -> onnx.ModelProto:
    """onnx.checker (full) plus strict shape inference; raises on any inconsistency."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
