"""Which receivers a webhook may reach: no SSRF into our own network.

An endpoint URL is checked when it is registered and again before every attempt, after DNS
resolution: every address the host resolves to must be public, or the endpoint is refused
(a name resolving to one public and one private address is refused too). The attempt then
connects to an address vetted here, never resolving again, so DNS rebinding between the check
and the connection cannot steer it inside. An explicit allow-list (ORDERFLOW_WEBHOOK_ALLOW:
CIDRs or host names) admits on-premise receivers and the tests' loopback receivers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Global-looking addresses that still reach a provider's control plane or are special.
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598); Alibaba's metadata is 100.100.100.200
        "168.63.129.16/32",  # Azure's wire server (a public address, but the host's metadata)
        "169.254.0.0/16",  # link-local, incl. the 169.254.169.254 metadata service
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. broadcast
        "fd00:ec2::254/128",  # AWS metadata over IPv6 (inside fc00::/7 as well)
        "64:ff9b:1::/48",  # local-use NAT64 prefix
        "ff00::/8",  # IPv6 multicast
    )
)
MAX_URL_LENGTH = 2048


class Refused(ValueError):
    """The URL or one of its addresses may not be reached; the message says why (for users)."""


@dataclass(frozen=True)
class Target:
    """A vetted receiver: where to connect (addresses) and what to say (host, path)."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (v4-mapped, 6to4, Teredo, NAT64, compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in ipaddress.ip_network("::/96") and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)  # deprecated v4-compatible
    return None


def is_public(address: IPAddress) -> bool:
    """True when the address is globally routable and not a known internal service."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    if any(address in network for network in BLOCKED_NETWORKS):
        return False
    return bool(address.is_global) and not address.is_multicast


class AddressPolicy:
    """The SSRF rule plus the allow-list; one instance per process (settings are fixed)."""

    def __init__(self, allow: Sequence[str] = (), resolver: Resolver | None = None):
        self.allowed_networks = []
        self.allowed_hosts = set()
        for item in allow:
            try:
                self.allowed_networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.allowed_hosts.add(item.lower().rstrip("."))
        self._resolve = resolver or resolve

    def address_allowed(self, address: str, host: str = "") -> bool:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
            mapped: IPAddress = parsed.ipv4_mapped
        else:
            mapped = parsed
        if host.lower().rstrip(".") in self.allowed_hosts:
            return True
        if any(mapped in network or parsed in network for network in self.allowed_networks):
            return True
        return is_public(parsed)

    def vet(self, url: str, require_https: bool = True) -> Target:
        """Parse and resolve `url`; Refused unless every address it resolves to is allowed."""
        scheme, host, port, path = parse_url(url, require_https)
        try:
            addresses = self._resolve(host, port)
        except (OSError, UnicodeError, ValueError):
            raise Refused(f"cannot resolve {host}") from None
        if not addresses:
            raise Refused(f"{host} has no address")
        for address in addresses:
            if not self.address_allowed(address, host):
                raise Refused(
                    f"{host} resolves to {address}, a loopback, private, link-local or other"
                    " internal address: webhooks only go to public receivers"
                )
        return Target(scheme, host, port, path, tuple(dict.fromkeys(addresses)))


def parse_url(url: str, require_https: bool = True) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an endpoint URL, or Refused."""
    if len(url) > MAX_URL_LENGTH or any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise Refused("the URL is too long or contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise Refused(f"not a valid URL: {error}") from None
    scheme = parts.scheme.lower()
    allowed_schemes = ("https",) if require_https else ("https", "http")
    if scheme not in allowed_schemes:
        raise Refused("the URL must start with " + " or ".join(f"{s}://" for s in allowed_schemes))
    if parts.username is not None or parts.password is not None:
        raise Refused("the URL may not contain a user name or password")
    if parts.fragment:
        raise Refused("the URL may not contain a #fragment")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise Refused("the URL has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")  # an IDN is resolved as its A-label
        except UnicodeError:
            raise Refused("the host name is not a valid internationalised name") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve(host: str, port: int) -> list[str]:
    """Every address of `host` (a literal address resolves to itself, in canonical form)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]
