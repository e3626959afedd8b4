"""doctor's view of this MX from outside: its certificate and its DNS (MX, FCrDNS).

Certificates are made here with `cryptography`; DNS answers come from a real DNS server on
loopback (tests/dns_server.py), as a sender's resolver would get them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orderflow_ingest.ops import mx_checks
from orderflow_ingest.ops.checks import FAIL, OK, WARN
from tests.dns_server import LoopbackDns

NOW = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
HOST = "mx1.orderflow.example"


def _certificate(
    tmp_path: Path, names: list[str], not_after: dt.datetime, self_signed: bool = False
) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_valid_certificate_for_the_mx_name_is_ok(tmp_path: Path) -> None:
    cert = _certificate(tmp_path, [HOST], NOW + dt.timedelta(days=80))
    check = mx_checks.check_certificate(str(cert), HOST, now=NOW)
    assert check.status == OK, check.detail
    assert "80 more days" in check.detail


def test_a_certificate_close_to_expiry_warns_and_an_expired_one_fails(tmp_path: Path) -> None:
    cert = _certificate(tmp_path, [HOST], NOW + dt.timedelta(days=10))
    soon = mx_checks.check_certificate(str(cert), HOST, now=NOW)
    assert soon.status == WARN and "expires in 10 days" in soon.detail
    late = mx_checks.check_certificate(str(cert), HOST, now=NOW + dt.timedelta(days=11))
    assert late.status == FAIL and "expired" in late.detail


def test_a_self_signed_or_snakeoil_certificate_is_flagged(tmp_path: Path) -> None:
    cert = _certificate(tmp_path, [HOST], NOW + dt.timedelta(days=3650), self_signed=True)
    check = mx_checks.check_certificate(str(cert), HOST, now=NOW)
    assert check.status == WARN and "self-signed" in check.detail


def test_a_certificate_for_another_name_is_flagged(tmp_path: Path) -> None:
    """The example inventory once shared one certificate between two MX names."""
    cert = _certificate(tmp_path, ["mx2.orderflow.example"], NOW + dt.timedelta(days=80))
    check = mx_checks.check_certificate(str(cert), HOST, now=NOW)
    assert check.status == WARN and f"not {HOST}" in check.detail
    wildcard = _certificate(tmp_path, ["*.orderflow.example"], NOW + dt.timedelta(days=80))
    assert mx_checks.check_certificate(str(wildcard), HOST, now=NOW).status == OK


def test_a_missing_certificate_fails(tmp_path: Path) -> None:
    check = mx_checks.check_certificate(str(tmp_path / "none.pem"), HOST, now=NOW)
    assert check.status == FAIL


def test_mx_and_ptr_are_checked_as_a_sender_resolves_them() -> None:
    with LoopbackDns() as dns:
        dns.a(HOST, "192.0.2.10")
        dns.ptr("192.0.2.10", HOST)
        dns.mx("orders.example", 10, HOST)
        dns.a("old-mx.example", "198.51.100.7")
        dns.mx("moved.example", 10, "old-mx.example")
        dns.a("a-only.example", "192.0.2.10")
        resolver = mx_checks.make_resolver([dns.server])
        checks = mx_checks.check_dns(
            resolver, ["orders.example", "moved.example", "a-only.example", "gone.example"], HOST
        )
        by_name = {check.name: check for check in checks}
        assert by_name["mx orders.example"].status == OK
        assert by_name["mx moved.example"].status == FAIL
        assert "old-mx.example" in by_name["mx moved.example"].detail
        # RFC 5321's implicit MX (an A record) does not count as pointing at us.
        assert by_name["mx a-only.example"].status == FAIL
        assert by_name["mx gone.example"].status == FAIL
        assert by_name["ptr"].status == OK

        dns.remove(ipaddress.ip_address("192.0.2.10").reverse_pointer, "PTR")
        dns.ptr("192.0.2.10", "customer-10.isp.example")
        assert mx_checks.check_fcrdns(resolver, HOST).status == WARN


def test_dns_checks_are_skipped_for_names_public_dns_never_has() -> None:
    resolver = mx_checks.make_resolver(["127.0.0.1:9"])  # never asked
    (check,) = mx_checks.check_dns(resolver, ["orderflow.test"], "mx.orderflow.test")
    assert check.status == "skip"


def test_a_dns_server_that_does_not_answer_is_a_warning_not_a_verdict() -> None:
    with LoopbackDns() as dns:
        dns.unresponsive("slow.example")
        resolver = mx_checks.make_resolver([dns.server])
        resolver.lifetime = 1.0
        check = mx_checks.check_mx(resolver, "slow.example", HOST)
        assert check.status == WARN
