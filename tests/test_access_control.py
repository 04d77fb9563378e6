"""Access control: loopback-only binding, gRPC over TLS end to end through the client, and the
model-repository/model-config protocols restricted by a header key that the client passes."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import AstroClient, EventHistory, ServerError
from contract.tensors import ENSEMBLE
from serve.server_options import GrpcTls, Restriction
from serve.triton_server import TritonServer

pytestmark = pytest.mark.server
HISTORY = EventHistory.from_lists([11, 12, 13], [0, 1, 0], [0, 0, 2], [1_699_990_000, 1_699_995_000, 1_699_999_000])
CANDIDATES = [12, 99, 4242, 7]
KEY = Restriction(("model-repository", "model-config"), "astro-admin-key", "s3cret-for-tests")


def self_signed(directory: Path) -> GrpcTls:
    """A fresh P-256 key and a certificate for 127.0.0.1/localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "astro-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return GrpcTls(cert_path, key_path, cert_path)


@pytest.fixture(scope="module")
def reference_scores(triton: TritonServer) -> np.ndarray:
    with AstroClient(triton.grpc_url) as client:
        return client.score(HISTORY, CANDIDATES, 0, 1_700_000_000)


@pytest.fixture(scope="module")
def tls_server(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with TritonServer(exported_repo, grpc_tls=self_signed(tmp_path_factory.mktemp("tls"))) as server:
        server.start(ready_models=[ENSEMBLE])
        yield server


@pytest.fixture(scope="module")
def restricted_server(exported_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(exported_repo, restricted=KEY) as server:
        server.start(ready_models=[ENSEMBLE])
        yield server


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (/proc/net/tcp and tcp6, state 0A).
    gRPC listens on IPv6 sockets with the IPv4-mapped loopback address ::ffff:127.0.0.1."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # kernel stores 32-bit words
            ip = ipaddress.ip_address(raw)
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            found.add(str(mapped or ip))
    return found


def test_binds_loopback_only_by_default(triton: TritonServer) -> None:
    assert triton.host == "127.0.0.1"
    for port in (triton.grpc_port, triton.http_port, triton.metrics_port):
        assert listening_addresses(port) == {"127.0.0.1"}, port


def test_tls_end_to_end(tls_server: TritonServer, reference_scores: np.ndarray) -> None:
    tls = tls_server.grpc_tls
    assert tls is not None
    with AstroClient(tls_server.grpc_url, ssl=True, root_certificates=tls.root_cert) as client:
        np.testing.assert_array_equal(client.score(HISTORY, CANDIDATES, 0, 1_700_000_000), reference_scores)


def test_plaintext_client_cannot_talk_to_tls_server(tls_server: TritonServer) -> None:
    with AstroClient(tls_server.grpc_url, timeout_s=3, retries=0) as client, pytest.raises(ServerError):
        client.score(HISTORY, CANDIDATES, 0, 1_700_000_000)


def test_restricted_endpoints_need_the_key(restricted_server: TritonServer) -> None:
    raw = grpcclient.InferenceServerClient(restricted_server.grpc_url)
    for call in (lambda h: raw.get_model_repository_index(headers=h), lambda h: raw.unload_model(ENSEMBLE, headers=h)):
        with pytest.raises(grpcclient.InferenceServerException, match="astro-admin-key"):
            call(None)
    index = raw.get_model_repository_index(headers=KEY.grpc_headers(), as_json=True)
    assert {m["name"] for m in index["models"]} >= {ENSEMBLE}


def test_client_passes_the_key(restricted_server: TritonServer, reference_scores: np.ndarray) -> None:
    with AstroClient(restricted_server.grpc_url, retries=0) as client, pytest.raises(ServerError, match="astro-admin"):
        client.get_spec()  # reading the served config is a restricted model-config call
    with AstroClient(restricted_server.grpc_url, headers=KEY.grpc_headers()) as client:
        np.testing.assert_array_equal(client.score(HISTORY, CANDIDATES, 0, 1_700_000_000), reference_scores)
