"""What the numbers were measured on: CPU, cores, load, library versions, GPU (or its absence)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort
import torch

NO_GPU = "no CUDA GPU visible"


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: above the core count, other work shared the CPU."""
    return [round(x, 2) for x in os.getloadavg()]


def gpu_name() -> str:
    """The CUDA device PyTorch would use, or :data:`NO_GPU`."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else NO_GPU


@dataclass(frozen=True)
class Machine:
    cpu: str
    logical_cpus: int | None
    cpus_usable: int
    threads: int  # torch intra-op, ONNX Runtime intra-op, each served model instance
    python: str
    platform: str
    torch: str
    onnxruntime: str
    nvidia_pytriton: str
    tritonclient: str
    numpy: str
    gpu: str
    load_average_start: list[float]
    load_average_end: list[float] = field(default_factory=list)  # set when the run ends
    triton_server: str = "not run"  # the served sections' server version


def describe(threads: int) -> Machine:
    return Machine(
        cpu=cpu_model(),
        logical_cpus=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)),
        threads=threads,
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        onnxruntime=ort.__version__,
        nvidia_pytriton=_version("nvidia-pytriton"),
        tritonclient=_version("tritonclient"),
        numpy=_version("numpy"),
        gpu=gpu_name(),
        load_average_start=load_average(),
    )
