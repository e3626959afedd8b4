"""DNS through a real server on loopback, the time budget, organizational domains and DMARC
records. The DNS server is tests/dns_server.py (dnslib), UDP and TCP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_server import LoopbackDns

from orderflow_ingest.milter.dmarc import aligned, from_domain, from_domains, parse_record
from orderflow_ingest.milter.dns import DnsBudget, DnspythonSource, DnsTempError, parse_server
from orderflow_ingest.milter.orgdomain import (
    PublicSuffixList,
    PublicSuffixListError,
    load,
    organizational_domain,
)
from orderflow_ingest.milter.spf_check import check_spf

pytestmark = pytest.mark.usefixtures("pyspf_through_budget")


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackDns]:
    with LoopbackDns() as dns:
        dns.txt("sender.test", "v=spf1 mx a:relay.sender.test -all")
        dns.mx("sender.test", 10, "mx.sender.test")
        dns.a("mx.sender.test", "192.0.2.20")
        dns.a("relay.sender.test", "192.0.2.21", "2001:db8::21")
        dns.txt(
            "long.test", "v=spf1 " + " ".join(f"ip4:10.0.{n}.0/24" for n in range(60)) + " -all"
        )
        dns.cname("alias.sender.test", "mx.sender.test")
        dns.unresponsive("dead.test")
        dns.servfail("broken.test")
        yield dns


@pytest.fixture
def source(server: LoopbackDns) -> DnspythonSource:
    return DnspythonSource((server.server,))


def test_records_over_udp_and_tcp(source: DnspythonSource) -> None:
    budget = DnsBudget(source, 3)
    assert budget.query("sender.test", "MX") == [(10, "mx.sender.test")]
    assert budget.query("relay.sender.test", "AAAA") == ["2001:db8::21"]
    assert budget.query("alias.sender.test", "A") == ["192.0.2.20"]
    assert budget.query("missing.sender.test", "A") == []
    assert budget.query("sender.test", "AAAA") == []
    long_record = budget.txt("long.test")  # > 512 bytes: truncated over UDP, retried over TCP
    assert len(long_record) == 1 and long_record[0].endswith(b"-all")


def test_unresponsive_server_ends_at_the_budget(source: DnspythonSource) -> None:
    budget = DnsBudget(source, 0.8)
    started = time.monotonic()
    with pytest.raises(DnsTempError):
        budget.txt("x.dead.test")
    assert 0.6 < time.monotonic() - started < 1.6
    with pytest.raises(DnsTempError, match="budget"):
        budget.txt("sender.test")  # spent: fails at once, no query sent


def test_servfail_is_a_temporary_error(source: DnspythonSource) -> None:
    with pytest.raises(DnsTempError):
        DnsBudget(source, 2).txt("broken.test")


def test_spf_over_real_dns(source: DnspythonSource) -> None:
    assert check_spf("192.0.2.20", "a@sender.test", "h", DnsBudget(source, 3)).result == "pass"
    assert check_spf("192.0.2.21", "a@sender.test", "h", DnsBudget(source, 3)).result == "pass"
    assert check_spf("192.0.2.99", "a@sender.test", "h", DnsBudget(source, 3)).result == "fail"
    assert check_spf("10.0.59.7", "a@long.test", "h", DnsBudget(source, 3)).result == "pass"
    started = time.monotonic()
    verdict = check_spf("192.0.2.1", "a@x.dead.test", "h", DnsBudget(source, 0.5))
    assert verdict.result == "temperror"
    assert time.monotonic() - started < 1.5


def test_parse_server() -> None:
    assert (parse_server("127.0.0.1").address, parse_server("127.0.0.1").port) == ("127.0.0.1", 53)
    assert parse_server("127.0.0.1:5353").port == 5353
    assert (parse_server("[::1]:5353").address, parse_server("[::1]:5353").port) == ("::1", 5353)
    assert parse_server("::1").address == "::1"


SYSTEM_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"


def test_organizational_domain_with_the_system_list() -> None:
    psl = load(SYSTEM_LIST)
    assert organizational_domain("mail.example.com", psl) == "example.com"
    assert organizational_domain("a.b.example.co.uk", psl) == "example.co.uk"
    assert organizational_domain("example.co.uk", psl) == "example.co.uk"
    assert organizational_domain("co.uk", psl) == "co.uk"
    assert organizational_domain("Shop.Parent.TEST.", psl) == "parent.test"


def test_item10_co_uk_aligned_and_not_aligned_correctly() -> None:
    """Relaxed alignment by the list: victim.co.uk and evil.co.uk are two organizations
    (the "last two labels" fallback made both co.uk and aligned them)."""
    psl = load(SYSTEM_LIST)
    assert not aligned("evil.co.uk", "victim.co.uk", "r", psl)
    assert not aligned("mail.evil.co.uk", "victim.co.uk", "r", psl)
    assert aligned("mail.victim.co.uk", "victim.co.uk", "r", psl)
    assert aligned("victim.co.uk", "shop.victim.co.uk", "r", psl)
    assert not aligned("mail.victim.co.uk", "victim.co.uk", "s", psl)
    assert not aligned("co.uk", "victim.co.uk", "r", psl)


def test_item10_no_usable_list_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PublicSuffixListError, match=r"ORDERFLOW_PUBLIC_SUFFIX_LIST.*publicsuffix"):
        load(tmp_path / "missing.dat")
    not_a_list = tmp_path / "empty.dat"
    not_a_list.write_text("// nothing\ncom\n")
    with pytest.raises(PublicSuffixListError, match="not a public suffix list"):
        load(not_a_list)
    unreadable = tmp_path / "dir.dat"
    unreadable.mkdir()
    with pytest.raises(PublicSuffixListError, match="cannot read"):
        load(unreadable)


def test_public_suffix_rules() -> None:
    psl = PublicSuffixList(["// comment", "com", "*.ck", "!www.ck", "co.uk", "uk"])
    assert organizational_domain("a.b.foo.ck", psl) == "b.foo.ck"
    assert organizational_domain("x.www.ck", psl) == "www.ck"
    assert organizational_domain("a.b.co.uk", psl) == "b.co.uk"
    assert organizational_domain("a.b.example", psl) == "b.example"  # implicit * rule


def test_dmarc_record_parsing() -> None:
    record = parse_record(b"v=DMARC1; p=reject; sp=none; adkim=s; aspf=r; pct=50; rua=x")
    assert record is not None
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct) == (
        "reject",
        "none",
        "s",
        "r",
        50,
    )
    assert parse_record(b"v=DMARC1;p=quarantine").sp == "quarantine"  # type: ignore[union-attr]
    assert parse_record(b"v=DMARC1; p=bogus").p == "none"  # type: ignore[union-attr]
    assert parse_record(b"p=reject; v=DMARC1") is None
    assert parse_record(b"v=spf1 -all") is None
    assert parse_record(b"v=DMARC1; p=reject; pct=x").pct == 100  # type: ignore[union-attr]


def _domains(*values: str) -> set[str]:
    return set().union(*(from_domains(value) for value in values))


def test_from_domain() -> None:
    assert from_domain(_domains(" Buyer <Buyer@Sender.TEST>")) == ("sender.test", None)
    assert from_domain(_domains(" a@x.test, b@x.test")) == ("x.test", None)
    assert from_domain(_domains(" a@x.test", " b@x.test.")) == ("x.test", None)
    assert from_domain(_domains(" a@x.test", " b@y.test")) == (None, "more than one From domain")
    assert from_domain(_domains(" a@x.test, b@y.test")) == (None, "more than one From domain")
    assert from_domain(_domains(" undisclosed-recipients:;")) == (None, "no From domain")
    assert from_domain(_domains()) == (None, "no From domain")


def test_answers_are_cached_for_their_ttl_and_failures_are_not(server: LoopbackDns) -> None:
    now = [time.time()]  # dnspython dates answers by the wall clock
    source = DnspythonSource((server.server,), clock=lambda: now[0])
    server.txt("cached.test", "v=spf1 -all")
    before = len(server.queries)
    for _ in range(5):
        assert DnsBudget(source, 2).txt("cached.test") == [b"v=spf1 -all"]
        assert DnsBudget(source, 2).txt("nothing-here.test") == []
    assert len(server.queries) - before == 2  # one each; the rest from the cache
    with pytest.raises(DnsTempError):
        DnsBudget(source, 2).txt("broken.test")
    with pytest.raises(DnsTempError):
        DnsBudget(source, 2).txt("broken.test")
    assert server.queries[-2:] == [("broken.test", "TXT")] * 2  # a failure is asked again
    now[0] += 3600  # beyond the 60 s TTL of the test server: asked again
    DnsBudget(source, 2).txt("cached.test")
    assert server.queries[-1] == ("cached.test", "TXT")


def test_item9_dns_cache_bounded_in_bytes_and_ttl(server: LoopbackDns) -> None:
    """Attacker-sized TXT answers with a TTL of years: the cache keeps under its byte cap,
    evicts the least recently used, and asks again once its own TTL cap has passed."""
    now = [time.time()]
    cap = 256 * 1024
    source = DnspythonSource(
        (server.server,), clock=lambda: now[0], cache_bytes=cap, cache_max_ttl=300
    )
    big = "v=spf1 " + "x" * 10_000  # 40 strings of 255 bytes: one 10 KB answer
    names = [f"n{index}.hostile.test" for index in range(100)]
    for name in names:
        server.txt(name, big)
    saved_ttl, server.ttl = server.ttl, 10**8  # about three years
    try:
        for name in names:
            assert DnsBudget(source, 3).txt(name) == [big.encode()]
            DnsBudget(source, 3).txt(names[0])  # kept in use: never the least recent
            assert source.cache.bytes <= cap
        assert 10 < len(source.cache) < 30  # 100 answers of 10 KB do not fit in 256 KiB
        asked = len(server.queries)
        DnsBudget(source, 3).txt(names[0])
        DnsBudget(source, 3).txt(names[-1])
        assert len(server.queries) == asked  # both cached
        DnsBudget(source, 3).txt(names[1])
        assert server.queries[-1] == (names[1], "TXT")  # the least recently used went first
        now[0] += 301  # past our TTL cap, long before the record's own TTL
        DnsBudget(source, 3).txt(names[0])
        assert server.queries[-1] == (names[0], "TXT")
    finally:
        server.ttl = saved_ttl


def test_item9_dns_cache_accounting_holds_under_threads() -> None:
    """Every connection thread shares one cache: its byte count stays exact and capped."""
    import threading

    from orderflow_ingest.milter.dns import AnswerCache, record_bytes

    cache = AnswerCache(64 * 1024, 60, clock=lambda: 1000.0)

    def worker(seed: int) -> None:
        for index in range(2000):
            key = (f"n{(seed * 7919 + index) % 300}.test", "TXT")
            if cache.get(key) is None:
                cache.put(key, [(b"x" * (index % 700),)], 1060.0)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = list(cache._entries.items())
    assert cache.bytes == sum(record_bytes(e[2]) + len(k[0]) for k, e in entries)
    assert cache.bytes <= 64 * 1024
    cache.put(("huge.test", "TXT"), [(b"x" * 9000,)], 1060.0)  # over an eighth: not kept
    assert cache.get(("huge.test", "TXT")) is None
    with pytest.raises(ValueError):
        AnswerCache(0, 60)
