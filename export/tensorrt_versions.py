"""Which TensorRT versions this project builds engines with, and which NGC Triton container ships which.

A serialized TensorRT engine (``model.plan``) loads only in the TensorRT version that built it
(TensorRT's version-compatibility mode aside, which this project does not use): an engine built
with TensorRT 10.13 fails to deserialize in a Triton container that ships 10.14. So the export
records the builder's version in ``model.plan.json`` and the repository check compares it with the
TensorRT of the container named by ``python -m export --triton-release YY.MM``.

Supported TensorRT: ``>= 10.12, < 12`` (:data:`SUPPORTED`). Every build is strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): the precision of every tensor comes from the
ONNX graph (see ``export/precision.py``), never from builder flags. 10.12 is the first release
that deprecates the weakly typed API (``BuilderFlag.FP16/BF16/OBEY_PRECISION_CONSTRAINTS``,
``ILayer.precision``, ``ILayer.set_output_type``); TensorRT 11 removes it and ignores the
``STRONGLY_TYPED`` flag (every network is strongly typed there), so one code path serves both
and no supported version needs a weakly typed path. 12 is excluded until it exists and has been
read.

:data:`TRITON_RELEASES` maps NGC ``nvcr.io/nvidia/tritonserver:<release>-py3`` releases to the
TensorRT they ship. Source: NVIDIA's Triton Inference Server release notes, one page per release
(``https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-YY-MM.html``,
table "NVIDIA Triton Inference Server Container Versions"), and the Deep Learning Frameworks
Support Matrix (``https://docs.nvidia.com/deeplearning/frameworks/support-matrix/``), which lists
the same per container release; each row names its page. A release missing here is refused with
the instruction to add its row from those pages: the check never guesses. The Triton versions were
checked against ``DEFAULT_TRITON_VERSION_MAP`` in ``build.py`` of each ``r<release>`` branch of
triton-inference-server/server; the TensorRT versions were not checked against the images themselves
(``dpkg -l | grep libnvinfer`` inside the container settles one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUPPORTED = ">=10.12,<12"  # the pip specifier of the `gpu` extra in pyproject.toml says the same
MIN_VERSION = (10, 12)
MAX_VERSION_EXCLUSIVE = (12, 0)
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:{release}-py3"
RELEASE_NOTES = "https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-{yy}-{mm}.html"
SUPPORT_MATRIX = "https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html"


class TensorRTVersionError(ValueError):
    """A TensorRT version outside the supported range, an unknown container release, or a plan whose
    TensorRT differs from the container's; the message says which versions would do."""


@dataclass(frozen=True)
class TritonRelease:
    release: str  # NGC tag prefix, "YY.MM"
    triton: str  # Triton Inference Server version inside
    tensorrt: str  # TensorRT version inside (full, as `tensorrt.__version__` reports it)

    @property
    def image(self) -> str:
        return NGC_IMAGE.format(release=self.release)

    @property
    def source(self) -> str:
        yy, mm = self.release.split(".")
        return RELEASE_NOTES.format(yy=yy, mm=mm)


TRITON_RELEASES: dict[str, TritonRelease] = {
    r.release: r
    for r in (
        # TensorRT 10.5: before the supported range; kept so the check can say why 24.10 (the Triton
        # 2.51 of the nvidia-pytriton wheel behind `make serve`) cannot serve our engines.
        TritonRelease("24.10", "2.51.0", "10.5.0.18"),
        TritonRelease("25.08", "2.60.0", "10.13.2.6"),
        TritonRelease("25.09", "2.61.0", "10.13.3.9"),
        TritonRelease("25.10", "2.62.0", "10.13.3.9"),
        TritonRelease("25.11", "2.63.0", "10.14.1.48"),
        TritonRelease("25.12", "2.64.0", "10.14.1.48"),
        TritonRelease("26.03", "2.67.0", "10.16.0.72"),
    )
}

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_version(version: str) -> tuple[int, int, int]:
    """ "10.13.3.9" -> (10, 13, 3): major, minor, patch (the build number does not change the plan format)."""
    m = _VERSION.match(version)
    if m is None:
        raise TensorRTVersionError(f"cannot read TensorRT version {version!r} (expected e.g. 10.13.3.9)")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def is_supported(version: str) -> bool:
    return MIN_VERSION <= parse_version(version)[:2] < MAX_VERSION_EXCLUSIVE


def require_supported(version: str) -> None:
    """Raise :class:`TensorRTVersionError` unless ``version`` is in :data:`SUPPORTED`."""
    if not is_supported(version):
        raise TensorRTVersionError(
            f"TensorRT {version} is outside the supported range {SUPPORTED} (strongly typed builds need >= 10.12); "
            f"`pip install 'tensorrt{SUPPORTED}'` or build inside a container of {supported_releases_text()}"
        )


def same_plan_format(a: str, b: str) -> bool:
    """Whether an engine built by TensorRT ``a`` deserializes in TensorRT ``b``: same major.minor.patch."""
    return parse_version(a) == parse_version(b)


def release(name: str) -> TritonRelease:
    """The table row of an NGC Triton release ("25.10"); :class:`TensorRTVersionError` when absent."""
    row = TRITON_RELEASES.get(name.strip().removesuffix("-py3"))
    if row is None:
        raise TensorRTVersionError(
            f"unknown NGC Triton release {name!r}; known: {', '.join(TRITON_RELEASES)}. Add its row to "
            f"TRITON_RELEASES in export/tensorrt_versions.py from its release notes ({SUPPORT_MATRIX})"
        )
    return row


def releases_shipping(version: str) -> list[TritonRelease]:
    """The known releases whose TensorRT loads plans built by ``version``."""
    return [r for r in TRITON_RELEASES.values() if same_plan_format(r.tensorrt, version)]


def supported_releases() -> list[TritonRelease]:
    return [r for r in TRITON_RELEASES.values() if is_supported(r.tensorrt)]


def supported_releases_text() -> str:
    return ", ".join(f"{r.release} (TensorRT {r.tensorrt})" for r in supported_releases())


def plan_problem(plan_version: str, container: TritonRelease) -> str | None:
    """Why a plan built by ``plan_version`` will not load in ``container``; None when it will."""
    if same_plan_format(plan_version, container.tensorrt):
        return None
    fits = ", ".join(r.release for r in releases_shipping(plan_version))
    instead = f"serve it in {fits} instead, or " if fits else ""
    return (
        f"built with TensorRT {plan_version} but {container.image} ships TensorRT {container.tensorrt}: "
        f"{instead}rebuild the engines with TensorRT {container.tensorrt} (e.g. inside {container.image})"
    )
