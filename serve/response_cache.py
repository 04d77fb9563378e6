"""Size of Triton's local response cache for a model repository: room for a stated number of users.

The generated configs enable ``response_cache`` on ``user_encoder`` only; one cache entry is one
user's encoder response, the keys/values ``[L, H, S, dh]`` twice plus the mask ``[S]``. The sizing
rule takes every user at the longest history the repository accepts, ``S_max = Nb · max_block_len``::

    bytes per user = 2 · L · H · S_max · dh · (cache dtype bytes) + S_max      (mask: 1 byte per token)
    cache size     = bytes per user × users

Shorter histories (smaller Tb) make smaller entries, so at least that many users fit; Triton adds a
small bookkeeping overhead per entry. Everything is read from the repository's ``config.pbtxt`` files
(the encoder's output dims and dtypes, the ensemble's published ``n_blocks`` and ``max_block_len``),
so the figure follows whatever config the repository was exported with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from contract.model_config import read_model_config
from contract.tensors import ENSEMBLE, USER_ENCODER

DEFAULT_USERS = 10_000
_ITEMSIZE = {"TYPE_FP32": 4, "TYPE_FP16": 2, "TYPE_BF16": 2, "TYPE_BOOL": 1, "TYPE_INT64": 8}


@dataclass(frozen=True)
class CacheSizing:
    """One user's cache entry and the cache size for ``users`` of them."""

    bytes_per_user: int
    users: int
    tensors: dict[str, int]  # output name -> bytes at S_max
    max_user_tokens: int  # S_max

    @property
    def size(self) -> int:
        return self.bytes_per_user * self.users

    def describe(self) -> str:
        parts = " + ".join(f"{name} {n:,}" for name, n in self.tensors.items())
        return (
            f"{self.size:,} bytes ({self.size / 2**20:,.1f} MiB) = {self.users:,} users × {self.bytes_per_user:,} "
            f"bytes per user at S_max = {self.max_user_tokens} ({parts})"
        )


def cache_sizing(repository: Path, users: int = DEFAULT_USERS) -> CacheSizing:
    """The cache size that holds ``users`` users' encoder responses at the longest history ``repository`` takes."""
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    params = {
        k: v.string_value for k, v in read_model_config(repository / ENSEMBLE / "config.pbtxt").parameters.items()
    }
    try:
        s_max = int(params["n_blocks"]) * int(params["max_block_len"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{repository / ENSEMBLE}: no usable n_blocks/max_block_len parameters ({e})") from e
    encoder = read_model_config(repository / USER_ENCODER / "config.pbtxt")
    tensors = {}
    for out in encoder.output:
        dtype = mc.DataType.Name(out.data_type)
        if dtype not in _ITEMSIZE:
            raise ValueError(f"{USER_ENCODER} output {out.name!r}: no item size known for {dtype}")
        # the one dynamic axis of the encoder's outputs is the user tokens S
        tensors[out.name] = math.prod(s_max if d == -1 else d for d in out.dims) * _ITEMSIZE[dtype]
    return CacheSizing(sum(tensors.values()), users, tensors, s_max)
