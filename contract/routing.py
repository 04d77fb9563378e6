"""How a call names the replica that keeps its user's keys/values: the routing key's header.

The client sends each call's routing key (by default a hash of the encoder inputs it carries, or a
caller-given user id) as gRPC metadata under :data:`ROUTE_KEY_HEADER`. Callers behind a service mesh
rely on it: the Istio ``DestinationRule`` in ``deploy/components/istio-affinity`` hashes this header
to pick a replica (``tests/test_deploy.py`` holds the two names together). gRPC metadata keys are
lowercase ASCII; HTTP/2 carries them as header names, which is what the mesh hashes.
"""

from __future__ import annotations

ROUTE_KEY_HEADER = "x-astro-route-key"
