"""An https:// endpoint: TLS to the vetted address with SNI and a certificate check for the
URL's host name (the connection never resolves the name again)."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orderflow_ingest.webhooks.http import post
from orderflow_ingest.webhooks.ssrf import Target


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    cert, key = self_signed(tmp_path, "hooks.example.test")
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], cert, seen
    server.shutdown()
    server.server_close()


def test_https_endpoint_is_reached_at_the_vetted_address_with_its_name_checked(
    tls_receiver: tuple[int, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert, seen = tls_receiver
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate only
    target = Target("https", "hooks.example.test", port, "/in", ("127.0.0.1",))
    result = post(target, {"webhook-id": "evt_1"}, b"{}", 2, 5)
    assert result.status == 204, result.error
    assert seen == [f"hooks.example.test:{port}"]


def test_https_with_a_certificate_for_another_name_fails(
    tls_receiver: tuple[int, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert, seen = tls_receiver
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    target = Target("https", "other.example.test", port, "/in", ("127.0.0.1",))
    result = post(target, {"webhook-id": "evt_1"}, b"{}", 2, 5)
    assert result.status is None
    assert "CERTIFICATE_VERIFY_FAILED" in (result.error or "")
    assert seen == []


def test_https_with_an_untrusted_certificate_fails(
    tls_receiver: tuple[int, Path, list[str]],
) -> None:
    port, _cert, seen = tls_receiver
    target = Target("https", "hooks.example.test", port, "/in", ("127.0.0.1",))
    result = post(target, {"webhook-id": "evt_1"}, b"{}", 2, 5)
    assert result.status is None and "CERTIFICATE_VERIFY_FAILED" in (result.error or "")
    assert seen == []
