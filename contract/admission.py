"""Admission control: how much work each composing model may hold queued, declared once.

Triton's dynamic batcher enforces it through each composing model's queue policy
(``dynamic_batching.default_queue_policy``), written into every generated ``config.pbtxt``
by ``export/repository.py`` and printed by ``python -m serve``:

* ``max_queue_size``: a request arriving at a full queue is refused at once with
  ``UNAVAILABLE: Exceeds maximum queue size`` (retryable; inside the ensemble Triton prefixes
  ``in ensemble 'astro'``); nothing of it runs on that model.
* ``default_timeout_microseconds`` with ``timeout_action: REJECT``: a request that waited longer
  than this in one queue is refused (``UNAVAILABLE: Request timeout expired``) before it runs.
* ``allow_timeout_override``: a request's own ``timeout`` (tritonclient ``infer(timeout=us)``,
  which the ensemble passes on to each step) replaces the default when it is shorter: a caller
  whose deadline passes while its request waits is never computed for. Triton applies the
  override only when it is shorter than a non-zero default (``PolicyQueue::Enqueue``), which is
  why the default is not 0 (no timeout).

Sizing rule (one line, :meth:`QueueBound.max_queue_size`): a queue may hold what the model's
instances clear in :data:`QUEUE_WAIT_MS` at the measured service time of a typical request,

    max_queue_size = max(instances, ceil(instances * QUEUE_WAIT_MS / service_ms))

so a request admitted at the back of a full queue waits about ``QUEUE_WAIT_MS`` there, and
memory holds at most ``max_queue_size`` waiting requests per model beside the ones running.
Requests larger than the typical one take longer to clear; :data:`QUEUE_TIMEOUT_US` bounds
the wait in time whatever their size. Both checks work on Triton 2.51 (the ``nvidia-pytriton``
server) for this ensemble, measured: docs/reliability.md, "Overload".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contract.tensors import GRAPHS, ITEM_SCORER, USER_ENCODER

# What a full queue may add to a request's latency, per composing model: against a p99 of tens of
# milliseconds at capacity (docs/bench/report.md, (c)), two full queues keep an admitted request's p99
# within about twice its p99 at capacity.
QUEUE_WAIT_MS = 50.0
# The longest any request may wait in one queue, whatever its size: the largest request the contract
# allows (B=16, Tb=48, N=1024) takes about 1 s on one CPU instance, so a queue of them is refused past
# this rather than served to callers that have long gone. A caller's shorter timeout overrides it.
QUEUE_TIMEOUT_US = 2_000_000
# Measured service time of a typical request (B=1, Tb=48, N=256; one single-threaded ONNX Runtime
# instance on the 2-core development machine; docs/bench/report.md (c), "Inside the server":
# compute infer per request). Re-measure with `python -m bench.overload` after a model change.
SERVICE_MS = {USER_ENCODER: 3.0, ITEM_SCORER: 10.0}
# The queues one ensemble request passes: every composing model's, each timing the request's own ``timeout``
# afresh (the ensemble passes it on to each step). A caller that sends each queue this share of what is left
# of its deadline keeps the request's two waits within what was left when it sent it.
QUEUED_STEPS = len(GRAPHS)


def queue_timeout_us(remaining_s: float) -> int:
    """Triton's per-request ``timeout`` (microseconds, at least 1) for a caller with ``remaining_s`` left:
    its share per queue of the ensemble."""
    return max(int(remaining_s / QUEUED_STEPS * 1e6), 1)


@dataclass(frozen=True)
class QueueBound:
    """The queue policy of one composing model."""

    model: str
    instances: int  # instances draining the queue
    service_ms: float  # measured time per typical request on one instance

    @property
    def max_queue_size(self) -> int:
        """Requests the queue may hold: what the instances clear in QUEUE_WAIT_MS, at least one per instance."""
        return max(self.instances, math.ceil(self.instances * QUEUE_WAIT_MS / self.service_ms))

    @property
    def timeout_us(self) -> int:
        return QUEUE_TIMEOUT_US

    def describe(self) -> str:
        return (
            f"{self.model}: at most {self.max_queue_size} queued requests ({self.instances} instance(s) x "
            f"{QUEUE_WAIT_MS:g} ms / {self.service_ms:g} ms per request), each queued at most "
            f"{self.timeout_us / 1e6:g} s or the caller's shorter timeout"
        )


def queue_bound(model: str, instances: int) -> QueueBound:
    """The bound of ``model`` served by ``instances`` instances (sized by the rule above)."""
    if instances < 1:
        raise ValueError(f"{model}: instances must be >= 1, got {instances}")
    return QueueBound(model, instances, SERVICE_MS[model])
