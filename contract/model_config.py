"""Read a model's ``config.pbtxt`` as Triton's ``ModelConfig`` protobuf (torch-free: protobuf and tritonclient).

The server launcher reads the configs to size the response cache and describe each queue; the export's
repository check (``export/repository_check.py``) reads them to validate the whole repository.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc


class ModelConfigError(ValueError):
    """A ``config.pbtxt`` that does not parse as a Triton ``ModelConfig``."""


def read_model_config(path: Path) -> mc.ModelConfig:
    """The ``ModelConfig`` of the ``config.pbtxt`` at ``path``; :class:`ModelConfigError` naming the file if it
    does not parse."""
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as e:
        raise ModelConfigError(f"{path}: not a valid Triton ModelConfig: {e}") from e
