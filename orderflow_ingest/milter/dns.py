"""DNS for SPF, DKIM and DMARC: one resolver, and a total time budget per check.

pyspf and dkimpy each take a *per look-up* timeout; an SPF record with ten includes can then
spend ten times that, far beyond Postfix's milter_command_timeout. Here every look-up of one
check draws from one budget (ORDERFLOW_DNS_TIMEOUT): when it is spent, the next look-up fails
at once with DnsTempError and the check records temperror, on purpose.

Answers come back in the plain shapes pyspf uses (see `DnsSource.query`), so the same source
serves all three checks, and a unit test can swap in a dict.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

# One answer record: A/AAAA/PTR -> str, MX -> (preference, exchange), TXT -> tuple of bytes.
Record = Any


class DnsTempError(Exception):
    """A look-up timed out, the server failed, or the check's budget is spent."""


class DnsSource(Protocol):
    def query(self, name: str, rdtype: str, timeout: float) -> list[Record]:
        """Records of `rdtype` at `name` ([] for NXDOMAIN or no data); DnsTempError otherwise.

        Shapes: A/AAAA/PTR/CNAME a str, MX (preference, exchange str), TXT a tuple of bytes.
        """
        ...


def parse_server(text: str) -> dns.nameserver.Do53Nameserver:
    """`ip`, `ip:port` or `[v6]:port` (ORDERFLOW_DNS_SERVERS) as a dnspython nameserver."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "53"
    return dns.nameserver.Do53Nameserver(host, int(port))


def record_bytes(records: list[Record]) -> int:
    """What one cached answer costs in memory, roughly: its data plus Python's overhead per
    object. A TXT answer is the sender's to size (attacker-sized records are the point)."""
    size = _ENTRY_OVERHEAD
    for record in records:
        if isinstance(record, tuple):
            size += _OBJECT_OVERHEAD + sum(
                _OBJECT_OVERHEAD + (len(part) if isinstance(part, bytes | str) else 8)
                for part in record
            )
        else:
            size += _OBJECT_OVERHEAD + len(str(record))
    return size


_ENTRY_OVERHEAD = 200  # key tuple, two strings, the entry tuple, the OrderedDict slot
_OBJECT_OVERHEAD = 40


class AnswerCache:
    """DNS answers for their TTL, capped by bytes and by a longest TTL; least recently used go
    first. Thread-safe: every connection thread of the milter shares one.

    Without the caps (issue 10, item 9) a sender could fill the daemon's memory: its own
    DNS names answer TXT records of up to 64 KB each, as many names as it likes, with a TTL
    of years. Now the whole cache stays under `max_bytes`, an answer bigger than an eighth
    of it is not cached at all, and nothing is kept past `max_ttl` seconds.
    """

    def __init__(self, max_bytes: int, max_ttl: float, clock: Callable[[], float] = time.time):
        if max_bytes <= 0 or max_ttl < 0:
            raise ValueError("the DNS cache needs a positive size and a TTL cap of at least 0")
        self.max_bytes = max_bytes
        self.max_ttl = max_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[float, int, list[Record]]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> list[Record] | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= now:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry[2]

    def put(self, key: tuple[str, str], records: list[Record], expires: float) -> None:
        now = self._clock()
        expires = min(expires, now + self.max_ttl)
        size = record_bytes(records) + len(key[0])
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if expires <= now or size > self.max_bytes // 8:
                return
            self._entries[key] = (expires, size, records)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[str, str]) -> None:
        _expires, size, _records = self._entries.pop(key)
        self.bytes -= size


def make_resolver(servers: Iterable[str] = ()) -> dns.resolver.Resolver:
    """The configured servers (`ip`, `ip:port`; ORDERFLOW_DNS_SERVERS), else resolv.conf; a
    SERVFAIL is an answer to report, not a reason to ask the same server again."""
    servers = tuple(servers)
    if servers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [parse_server(server) for server in servers]
    else:
        resolver = dns.resolver.Resolver(configure=True)
    resolver.retry_servfail = False
    return resolver


class DnspythonSource:
    """The real resolver: the configured servers, or /etc/resolv.conf when none are named.

    One instance is shared by every connection thread. Answers are cached for their TTL, as
    any resolver would: a busy sender's SPF, DMARC and key records are then one round trip
    per TTL instead of three per message. The cache holds our plain records (a dict look-up,
    where dnspython's own cache still costs a name parse and a resolution object per query),
    bounded in bytes and in TTL (`AnswerCache`); a name that does not exist is cached for
    NEGATIVE_TTL seconds at most.
    """

    NEGATIVE_TTL = 60.0
    CACHE_BYTES = 16 * 1024 * 1024  # ORDERFLOW_DNS_CACHE_BYTES
    CACHE_MAX_TTL = 3600.0  # ORDERFLOW_DNS_CACHE_MAX_TTL

    def __init__(
        self,
        servers: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        cache_bytes: int = CACHE_BYTES,
        cache_max_ttl: float = CACHE_MAX_TTL,
    ):
        self._resolver = make_resolver(servers)
        self._clock = clock
        self.cache = AnswerCache(cache_bytes, cache_max_ttl, clock)

    def query(self, name: str, rdtype: str, timeout: float) -> list[Record]:
        key = (name.rstrip(".").lower(), rdtype.upper())
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        now = self._clock()
        records, expires = self._resolve(key[0], key[1], timeout, now)
        self.cache.put(key, records, expires)
        return records

    def _resolve(
        self, name: str, rdtype: str, timeout: float, now: float
    ) -> tuple[list[Record], float]:
        """(records, until when they may be cached); DnsTempError when there is no answer."""
        try:
            answer = self._resolver.resolve(
                name + ".",
                rdtype,
                lifetime=max(timeout, 0.001),
                search=False,
                raise_on_no_answer=False,
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN, dns.resolver.NoAnswer):
            return [], now + self.NEGATIVE_TTL
        except dns.name.NameTooLong:
            return [], now + self.NEGATIVE_TTL
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout) as error:
            raise DnsTempError(f"timeout looking up {rdtype} {name}") from error
        except dns.resolver.NoNameservers as error:
            raise DnsTempError(f"no server answered {rdtype} {name}") from error
        except (dns.exception.DNSException, OSError) as error:
            raise DnsTempError(f"{type(error).__name__} looking up {rdtype} {name}") from error
        if answer.rrset is None:
            return [], min(answer.expiration, now + self.NEGATIVE_TTL)
        return [_record(rdtype, rdata) for rdata in answer.rrset], answer.expiration


def _record(rdtype: str, rdata: Any) -> Record:
    kind = rdtype.upper()
    if kind in ("A", "AAAA"):
        return rdata.address
    if kind == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if kind in ("PTR", "CNAME"):
        return rdata.target.to_text(omit_final_dot=True)
    if kind in ("TXT", "SPF"):
        return tuple(rdata.strings)
    return rdata.to_text()


class DnsBudget:
    """The look-ups of one check, all drawn from one total time budget."""

    def __init__(
        self,
        source: DnsSource,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._source = source
        self._clock = clock
        self.seconds = seconds
        self._deadline = clock() + seconds
        self.lookups = 0

    def remaining(self) -> float:
        return self._deadline - self._clock()

    def query(self, name: str, rdtype: str) -> list[Record]:
        remaining = self.remaining()
        if remaining <= 0:
            raise DnsTempError(f"DNS budget of {self.seconds:g}s spent before {rdtype} {name}")
        self.lookups += 1
        return self._source.query(name, rdtype, remaining)

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record at `name` with its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(strings) for strings in self.query(name, "TXT")]
