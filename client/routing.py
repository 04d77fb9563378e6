"""Which replica serves a call: rendezvous hashing of the call's routing key, with bounded load.

Each Triton replica has its own response cache, and a hit needs byte-identical encoder inputs
(the user's history blocks and the request scenario). So the key of a call is, by default, a
hash of exactly those bytes (:func:`route_key`): every call that could hit the cache goes to the
one replica that holds the entry, and distinct histories spread evenly. A caller with a stable
user id may route by it instead (:func:`user_route_key`).

- **Rendezvous (highest random weight) hashing** (:func:`ranking`): every replica gets a weight
  ``hash(key, replica)``; the key's replicas in order of weight are its first choice, its
  fallback, and so on. When a replica leaves the set, only the keys whose first choice it was
  move (about 1/R of them), each to its own next choice; when one joins, it takes about 1/R of
  the keys from the others and nothing else moves.
- **Bounded load** (:func:`choose`): a replica already holding ``cap = ceil(c * (in_flight + 1) / R)``
  calls (``c`` times the mean, counting the call being placed; ``c`` = :data:`DEFAULT_LOAD_FACTOR`)
  is passed over for the key's next choice, so a hot key cannot pile onto one replica. Some
  replica is always under the cap when ``c >= 1``.
- **Failover** (:class:`Router`): a replica that is gone (UNAVAILABLE without a server's refusal)
  is ejected for a cool-down that doubles while it keeps failing (from :data:`EJECT_BASE_S` up to
  :data:`EJECT_MAX_S`), and its keys go to their next choices meanwhile; a call the client tries
  again is never sent to a replica it already tried while another is left.
- **The replica set** comes from a list of addresses or a DNS name that resolves to several (a
  Kubernetes headless Service), re-resolved every ``refresh_s`` so scale events are picked up.

The key also travels with every call as the gRPC header :data:`ROUTE_KEY_HEADER`, for a service
mesh's consistent hashing (Istio ``DestinationRule`` ``consistentHash.httpHeaderName``).
Pure logic, no I/O but the resolver it is given; thread-safe.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from contract.tensors import GRAPH_IO, USER_ENCODER

ENCODER_INPUTS: tuple[str, ...] = GRAPH_IO[USER_ENCODER][0]  # what Triton's response cache keys on
DEFAULT_LOAD_FACTOR = 1.25  # c: a replica may hold up to 1.25 x the mean in-flight calls before keys spill
DEFAULT_REFRESH_S = 10.0  # re-resolve a DNS name this often (a scale event is seen within this)
EJECT_BASE_S = 1.0  # a replica found gone sits out this long, doubling while it keeps failing ...
EJECT_MAX_S = 30.0  # ... up to this
KEY_BYTES = 8  # 64-bit keys and weights


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two part lists hash alike by accident
        h.update(part)
    return h.digest()


def route_key(inputs: Mapping[str, npt.ArrayLike]) -> str:
    """The routing key of one ``B=1`` call: a hash of its encoder inputs (names, dtypes, shapes, bytes),
    the very tensors Triton's response cache keys ``user_encoder`` on; 16 hex digits.

    Inputs of other graphs (candidates, the request time) do not enter: every page of a user with an
    unchanged history and scenario has the same key."""
    parts: list[bytes] = []
    for name in ENCODER_INPUTS:
        if name in inputs:
            arr = np.ascontiguousarray(inputs[name])
            parts += [name.encode(), arr.dtype.str.encode(), repr(arr.shape).encode(), arr.tobytes()]
    return _digest(*parts).hex()


def user_route_key(user_id: str) -> str:
    """The routing key of every call of a caller-given user id; 16 hex digits."""
    return _digest(b"user", user_id.encode()).hex()


def weight(key: str, replica: str) -> int:
    """Rendezvous weight of ``replica`` for ``key``: a 64-bit hash of both."""
    return int.from_bytes(_digest(key.encode(), replica.encode()), "big")


def ranking(key: str, replicas: Collection[str]) -> list[str]:
    """``replicas`` in ``key``'s order of preference: highest weight first (ties, never seen, by name)."""
    return sorted(replicas, key=lambda r: (weight(key, r), r), reverse=True)


def load_cap(in_flight: int, replicas: int, load_factor: float) -> int:
    """Calls a replica may hold before a new call spills past it: ``ceil(c * (in_flight + 1) / R)``."""
    return math.ceil(load_factor * (in_flight + 1) / replicas)


def choose(ranked: Sequence[str], in_flight: Mapping[str, int], load_factor: float) -> str:
    """The first of ``ranked`` holding fewer than :func:`load_cap` calls in flight (among ``ranked``)."""
    if not ranked:
        raise ValueError("choose needs at least one replica")
    cap = load_cap(sum(in_flight.get(r, 0) for r in ranked), len(ranked), load_factor)
    return next((r for r in ranked if in_flight.get(r, 0) < cap), ranked[0])


class Router:
    """The replica set, the calls in flight on each replica and the ejected ones; places each call.

    ``replicas``: the set to start from (``ip:port`` strings, what a channel dials). ``resolve``:
    returns the set anew (a DNS name's addresses), called at most every ``refresh_s``; a failed or
    empty resolution keeps the old set. ``clock``: seconds, monotonic (a test may pass its own).
    """

    def __init__(
        self,
        replicas: Sequence[str],
        *,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        resolve: Callable[[], Sequence[str]] | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a router needs at least one replica")
        if not load_factor >= 1:
            raise ValueError(f"load_factor={load_factor} must be >= 1 (the mean load itself must fit)")
        if not refresh_s > 0:
            raise ValueError(f"refresh_s={refresh_s} must be > 0")
        self.load_factor = float(load_factor)
        self._replicas = tuple(dict.fromkeys(replicas))
        self._resolve = resolve
        self._refresh_s = float(refresh_s)
        self._clock = clock
        self._next_refresh = clock() + refresh_s
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._ejected_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._removed: set[str] = set()

    @property
    def replicas(self) -> tuple[str, ...]:
        """The current replica set (re-resolved first if due)."""
        self._refresh()
        with self._lock:
            return self._replicas

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return {r: n for r, n in self._in_flight.items() if n}

    def acquire(self, key: str, tried: Collection[str] = ()) -> str:
        """Place a call of ``key``: its first choice among the replicas that are neither ejected nor in
        ``tried`` (all of them if none is left), under the load bound; counted in flight until
        :meth:`release`."""
        self._refresh()
        with self._lock:
            now = self._clock()
            live = [r for r in self._replicas if self._ejected_until.get(r, 0.0) <= now] or list(self._replicas)
            fresh = [r for r in live if r not in tried] or live
            replica = choose(ranking(key, fresh), self._in_flight, self.load_factor)
            self._in_flight[replica] = self._in_flight.get(replica, 0) + 1
            return replica

    def release(self, replica: str, *, ok: bool, gone: bool = False) -> None:
        """A call placed on ``replica`` ended: ``ok`` (answered), or failed; ``gone``: the replica was not
        there (eject it for a cool-down that doubles with each failure in a row)."""
        with self._lock:
            self._in_flight[replica] = max(self._in_flight.get(replica, 0) - 1, 0)
            if ok:
                self._failures.pop(replica, None)
                self._ejected_until.pop(replica, None)
            elif gone:
                n = self._failures.get(replica, 0) + 1
                self._failures[replica] = n
                self._ejected_until[replica] = self._clock() + min(EJECT_MAX_S, EJECT_BASE_S * 2 ** (n - 1))

    def retired(self) -> list[str]:
        """Replicas that left the set and have no call in flight (their channels may close); each once."""
        with self._lock:
            done = [r for r in self._removed if not self._in_flight.get(r)]
            self._removed.difference_update(done)
            return done

    def _refresh(self) -> None:
        """Re-resolve the set if due. One caller per period resolves, outside the lock: a slow DNS answer
        never holds up the calls being placed meanwhile (they use the set we know)."""
        if self._resolve is None:
            return
        with self._lock:
            if self._clock() < self._next_refresh:
                return
            self._next_refresh = self._clock() + self._refresh_s
        try:
            fresh = tuple(dict.fromkeys(self._resolve()))
        except (OSError, ValueError):  # DNS down for a moment: keep serving the set we know
            return
        with self._lock:
            self._apply(fresh)

    def _apply(self, fresh: tuple[str, ...]) -> None:
        if fresh and fresh != self._replicas:
            gone = set(self._replicas) - set(fresh)
            self._removed |= gone
            self._removed -= set(fresh)
            for r in gone:
                self._ejected_until.pop(r, None)
                self._failures.pop(r, None)
            self._replicas = fresh
