"""What the Internet sees of this MX: its TLS certificate and its DNS (doctor's checks).

A mail host can pass every local check and still lose mail to the world: a certificate that
expired last night, an MX record that points at an old host, a PTR that does not match the
HELO name (large receivers and senders treat that as spam-like). These checks read what a
sender would read, within a time budget, and say what to fix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.resolver
import dns.reversename

from orderflow_ingest.milter import dns as dns_setup
from orderflow_ingest.ops.checks import FAIL, OK, SKIP, WARN, Check

SNAKEOIL_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
# Warn this long before a certificate expires (ACME renews at 30 days left; 21 means a renewal
# has failed at least twice).
EXPIRY_WARNING = dt.timedelta(days=21)
DNS_LIFETIME = 5.0
# RFC 2606/6761 names that no public resolver answers (the devstack's mx.orderflow.test).
PRIVATE_TLDS = frozenset({"test", "invalid", "localhost"})


@dataclass(frozen=True)
class CertificateFacts:
    not_after: dt.datetime
    names: tuple[str, ...]
    self_signed: bool


def certificate_facts(path: Path) -> CertificateFacts:
    """Expiry, DNS names and self-signedness of the first certificate of a PEM chain."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(name).lower() for name in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = [
            str(attr.value).lower()
            for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return CertificateFacts(
        not_after=cert.not_valid_after_utc,
        names=tuple(names),
        self_signed=cert.issuer == cert.subject,
    )


def name_matches(hostname: str, names: Iterable[str]) -> bool:
    """RFC 6125 matching: exact, or one leftmost wildcard label."""
    hostname = hostname.rstrip(".").lower()
    for name in names:
        name = name.rstrip(".").lower()
        if name == hostname:
            return True
        if name.startswith("*.") and "." in hostname and hostname.split(".", 1)[1] == name[2:]:
            return True
    return False


def check_certificate(cert_file: str, hostname: str, now: dt.datetime | None = None) -> Check:
    """The smtpd certificate: present, valid for long enough, for this host's name, not snakeoil."""
    now = now or dt.datetime.now(dt.UTC)
    path = Path(cert_file)
    if not cert_file or not path.is_file():
        return Check("tls certificate", FAIL, f"smtpd_tls_cert_file {cert_file!r} does not exist")
    try:
        facts = certificate_facts(path)
    except (OSError, ValueError) as error:
        return Check("tls certificate", FAIL, f"{cert_file}: not a PEM certificate ({error})")
    left = facts.not_after - now
    if left <= dt.timedelta(0):
        return Check("tls certificate", FAIL, f"{cert_file} expired on {facts.not_after:%Y-%m-%d}")
    if left < EXPIRY_WARNING:
        return Check(
            "tls certificate",
            WARN,
            f"{cert_file} expires in {left.days} days ({facts.not_after:%Y-%m-%d}): is renewal "
            "running? (docs/operations.md, Certificates)",
        )
    if cert_file == SNAKEOIL_CERT or facts.self_signed:
        return Check(
            "tls certificate",
            WARN,
            f"{cert_file} is self-signed: opportunistic TLS works, but senders enforcing "
            "MTA-STS or DANE will not deliver (docs/operations.md, Certificates)",
        )
    if not name_matches(hostname, facts.names):
        return Check(
            "tls certificate",
            WARN,
            f"{cert_file} is for {', '.join(facts.names) or 'no DNS name'}, not {hostname}",
        )
    return Check("tls certificate", OK, f"{hostname}, valid for {left.days} more days")


def make_resolver(servers: Sequence[str]) -> dns.resolver.Resolver:
    """The configured resolvers (ORDERFLOW_DNS_SERVERS), or /etc/resolv.conf when none."""
    resolver = dns_setup.make_resolver(servers)
    resolver.lifetime = DNS_LIFETIME
    return resolver


def _addresses(resolver: dns.resolver.Resolver, name: str) -> set[str]:
    found: set[str] = set()
    for rdtype in ("A", "AAAA"):
        try:
            found |= {str(r) for r in resolver.resolve(name, rdtype)}
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
    return found


def check_mx(resolver: dns.resolver.Resolver, domain: str, hostname: str) -> Check:
    """The ingest domain's MX names this host (by name, or by a name with our addresses)."""
    name = f"mx {domain}"
    try:
        targets = [str(r.exchange).rstrip(".").lower() for r in resolver.resolve(domain, "MX")]
    except dns.resolver.NXDOMAIN:
        return Check(name, FAIL, f"{domain} does not exist in DNS")
    except dns.resolver.NoAnswer:
        return Check(
            name, FAIL, f"{domain} has no MX record (an A record does not count: publish MX)"
        )
    except dns.exception.DNSException as error:
        return Check(name, WARN, f"DNS did not answer for {domain} MX: {type(error).__name__}")
    if hostname.lower() in targets:
        return Check(name, OK, f"{domain} MX → {', '.join(sorted(targets))}")
    ours = _addresses(resolver, hostname)
    for target in targets:
        if ours & _addresses(resolver, target):
            return Check(name, OK, f"{domain} MX {target} has this host's address")
    return Check(name, FAIL, f"{domain} MX → {', '.join(targets)}; none is {hostname}")


def check_fcrdns(resolver: dns.resolver.Resolver, hostname: str) -> Check:
    """Forward-confirmed reverse DNS: every address of myhostname has a PTR back to it."""
    try:
        addresses = _addresses(resolver, hostname)
    except dns.exception.DNSException as error:
        return Check("ptr", WARN, f"DNS did not answer for {hostname}: {type(error).__name__}")
    if not addresses:
        return Check("ptr", FAIL, f"{hostname} (myhostname) has no A/AAAA record")
    wrong: list[str] = []
    for address in sorted(addresses):
        try:
            ptrs = {
                str(r).rstrip(".").lower()
                for r in resolver.resolve(dns.reversename.from_address(address), "PTR")
            }
        except dns.exception.DNSException:
            ptrs = set()
        if hostname.lower() not in ptrs:
            wrong.append(f"{address} → {', '.join(sorted(ptrs)) or 'no PTR'}")
    if wrong:
        return Check("ptr", WARN, f"PTR does not match {hostname}: {'; '.join(wrong)}")
    return Check("ptr", OK, f"{hostname} ↔ {', '.join(sorted(addresses))}")


def check_dns(
    resolver: dns.resolver.Resolver, domains: Sequence[str], hostname: str
) -> list[Check]:
    if not hostname or "." not in hostname:
        return [Check("dns", SKIP, f"myhostname {hostname!r} is not a DNS name")]
    if hostname.rstrip(".").rsplit(".", 1)[-1].lower() in PRIVATE_TLDS:
        return [Check("dns", SKIP, f"{hostname} is under a TLD that public DNS never has")]
    return [check_mx(resolver, domain, hostname) for domain in domains] + [
        check_fcrdns(resolver, hostname)
    ]
