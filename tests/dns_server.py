"""A real DNS server on loopback for the milter's tests (dnslib), UDP and TCP on one port.

Serves TXT (SPF, DKIM keys, DMARC), A, AAAA, MX and CNAME records from a dict that tests may
change while it runs. Names under an "unresponsive" zone get no answer at all (the query is
dropped, as a dead authoritative server would), so a resolver's time budget is what ends the
look-up; names under a "servfail" zone get SERVFAIL.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from typing import Any

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSLabel
from dnslib.server import BaseResolver, DNSError, DNSLogger, DNSServer


class _Drop(DNSError):
    """Raised to make dnslib's handler send nothing."""


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


class _ZoneResolver(BaseResolver):
    def __init__(self, owner: LoopbackDns):
        self.owner = owner

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = _norm(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        owner = self.owner
        with owner.lock:
            owner.queries.append((qname, qtype))
            if any(qname == z or qname.endswith("." + z) for z in owner.unresponsive_zones):
                raise _Drop(f"dropping {qname}")
            if any(qname == z or qname.endswith("." + z) for z in owner.servfail_zones):
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            records = list(owner.records.get((qname, qtype), []))
            cname = owner.records.get((qname, "CNAME"))
            known = any(name == qname for name, _ in owner.records)
        if not records and cname and qtype != "CNAME":
            target = cname[0]
            reply.add_answer(RR(request.q.qname, QTYPE.CNAME, rdata=CNAME(target), ttl=owner.ttl))
            with owner.lock:
                records = list(owner.records.get((_norm(target), qtype), []))
            for record in records:
                reply.add_answer(
                    RR(DNSLabel(target), getattr(QTYPE, qtype), rdata=record, ttl=owner.ttl)
                )
            return reply
        if not records and not known:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for record in records:
            reply.add_answer(
                RR(request.q.qname, getattr(QTYPE, qtype), rdata=record, ttl=owner.ttl)
            )
        return reply


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackDns:
    """Start with `with LoopbackDns() as dns:`; `dns.server` is what ORDERFLOW_DNS_SERVERS takes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[tuple[str, str], list[Any]] = {}
        self.unresponsive_zones: set[str] = set()
        self.servfail_zones: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.ttl = 60  # of every answer; a test may set a hostile one (years)
        self.port = 0
        self._servers: list[DNSServer] = []

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- records -----------------------------------------------------------------------------

    def _add(self, name: str, qtype: str, rdata: Any) -> None:
        with self.lock:
            self.records.setdefault((_norm(name), qtype), []).append(rdata)

    def txt(self, name: str, *texts: str) -> None:
        """One TXT record per text, split into 255-byte strings as real zones do."""
        for text in texts:
            data = text.encode()
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            self._add(name, "TXT", TXT(chunks))

    def a(self, name: str, *addresses: str) -> None:
        for address in addresses:
            self._add(
                name,
                "AAAA" if ":" in address else "A",
                AAAA(address) if ":" in address else A(address),
            )

    def mx(self, name: str, preference: int, exchange: str) -> None:
        self._add(name, "MX", MX(exchange, preference))

    def ptr(self, address: str, target: str) -> None:
        """A PTR record for an IPv4 or IPv6 address (the reverse name is derived)."""
        import ipaddress

        self._add(ipaddress.ip_address(address).reverse_pointer, "PTR", PTR(target))

    def cname(self, name: str, target: str) -> None:
        with self.lock:
            self.records[(_norm(name), "CNAME")] = [target]

    def remove(self, name: str, qtype: str | None = None) -> None:
        with self.lock:
            for key in [k for k in self.records if k[0] == _norm(name) and qtype in (None, k[1])]:
                del self.records[key]

    def unresponsive(self, *zones: str) -> None:
        with self.lock:
            self.unresponsive_zones.update(_norm(zone) for zone in zones)

    def servfail(self, *zones: str) -> None:
        with self.lock:
            self.servfail_zones.update(_norm(zone) for zone in zones)

    def load(self, records: Iterable[tuple[str, str, Any]]) -> None:
        for name, qtype, value in records:
            if qtype == "TXT":
                self.txt(name, value)
            elif qtype in ("A", "AAAA"):
                self.a(name, value)
            elif qtype == "MX":
                self.mx(name, *value)
            elif qtype == "CNAME":
                self.cname(name, value)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> LoopbackDns:
        logger = DNSLogger(logf=lambda _line: None)
        resolver = _ZoneResolver(self)
        last_error: OSError | None = None
        for _attempt in range(20):
            port = _free_port()
            servers: list[DNSServer] = []
            try:
                for tcp in (False, True):
                    server = DNSServer(
                        resolver, port=port, address="127.0.0.1", tcp=tcp, logger=logger
                    )
                    servers.append(server)
            except OSError as error:  # the port was taken between probe and bind
                last_error = error
                for server in servers:
                    server.server.server_close()
                continue
            for server in servers:
                server.start_thread()
            self._servers = servers
            self.port = port
            return self
        raise RuntimeError(f"no free port for the test DNS server: {last_error}")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> LoopbackDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
