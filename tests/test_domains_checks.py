"""The DNS checks of a custom domain (orderflow_ingest/domains/checks.py) against a real DNS
server on loopback: what counts as TXT present and MX ours, and what is only a failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dns_server import LoopbackDns

from orderflow_ingest.domains.checks import check_domain, make_resolver, txt_name, txt_value
from orderflow_ingest.domains.policy import Answer

TOKEN = "tok_abcdefghijklmnop1234"
OURS = ("mx1.orderflow.test", "mx2.orderflow.test")


@pytest.fixture
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        yield server


def check(dns: LoopbackDns, domain: str, timeout: float = 2.0) -> tuple[Answer, Answer]:
    result = check_domain(make_resolver([dns.server]), domain, TOKEN, OURS, timeout)
    assert result.detail
    return result.txt, result.mx


def test_token_and_every_mx_ours_pass(dns: LoopbackDns) -> None:
    dns.txt(txt_name("po.good.test"), "some-other=thing", txt_value(TOKEN))
    dns.mx("po.good.test", 10, "mx1.orderflow.test")
    dns.mx("po.good.test", 20, "MX2.orderflow.test.")
    assert check(dns, "po.good.test") == (Answer.YES, Answer.YES)


def test_missing_or_wrong_token_is_a_clear_no(dns: LoopbackDns) -> None:
    dns.mx("po.a.test", 10, "mx1.orderflow.test")
    assert check(dns, "po.a.test") == (Answer.NO, Answer.YES)  # NXDOMAIN for the TXT name
    dns.txt(txt_name("po.a.test"), txt_value("someone-elses-token-000"))
    assert check(dns, "po.a.test") == (Answer.NO, Answer.YES)


def test_mx_elsewhere_no_mx_and_null_mx_are_not_ours(dns: LoopbackDns) -> None:
    for name in ("po.b.test", "po.c.test", "po.d.test", "po.e.test"):
        dns.txt(txt_name(name), txt_value(TOKEN))
    dns.mx("po.b.test", 10, "mx1.orderflow.test")
    dns.mx("po.b.test", 20, "backup.elsewhere.test")  # mail given there never reaches us
    assert check(dns, "po.b.test") == (Answer.YES, Answer.NO)
    dns.a("po.c.test", "192.0.2.25")  # no MX: the A fallback of RFC 5321 does not count
    assert check(dns, "po.c.test") == (Answer.YES, Answer.NO)
    dns.mx("po.d.test", 0, ".")  # RFC 7505 null MX
    assert check(dns, "po.d.test") == (Answer.YES, Answer.NO)
    assert check(dns, "po.nonexistent.test") == (Answer.NO, Answer.NO)  # NXDOMAIN


def test_timeouts_and_servfail_are_errors_not_answers(dns: LoopbackDns) -> None:
    dns.unresponsive("slow.test")
    dns.servfail("broken.test")
    assert check(dns, "po.slow.test", timeout=0.5) == (Answer.ERROR, Answer.ERROR)
    assert check(dns, "po.broken.test") == (Answer.ERROR, Answer.ERROR)


def test_no_server_listening_is_an_error() -> None:
    with LoopbackDns() as gone:
        server = gone.server
    result = check_domain(make_resolver([server]), "po.x.test", TOKEN, OURS, 0.5)
    assert (result.txt, result.mx) == (Answer.ERROR, Answer.ERROR)
