"""The milter class in-process (pymilter's test context), with an injected DNS and org lookup.

Pure logic: no daemon, no Postfix, no database. DNS is a dict (FakeDns); messages are really
signed with keys generated here. The same scenarios run over real SMTP in
test_milter_integration.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import Milter
import pytest
from milter_harness import FakeDns, PostfixLikeCtx, Transaction, ed25519_key, make_message, rsa_key

from orderflow_ingest import metrics
from orderflow_ingest.auth_verdicts import parse_our_verdicts
from orderflow_ingest.milter import handler as handler_module
from orderflow_ingest.milter.handler import MilterConfig, OrderflowMilter
from orderflow_ingest.milter.orgdomain import load as load_psl
from orderflow_ingest.milter.recipients import DirectoryUnavailable, OrgDirectory, OrgStatus

AUTHSERV = "mx.orders.test"
DOMAIN = "orders.test"
CLIENT_IP = "192.0.2.10"
RSA = rsa_key("sel1", "sender.test")
ED = ed25519_key("ed1", "sender.test")
THIRD_PARTY = rsa_key("esp", "esp.example")
EVIL_CO_UK = rsa_key("s1", "evil.co.uk")
VICTIM_CO_UK = rsa_key("s1", "mail.victim.co.uk")
# The list the milter is configured with by default (Debian's publicsuffix).
PSL = load_psl("/usr/share/publicsuffix/public_suffix_list.dat")


class Orgs:
    """An injected org lookup that counts its calls and can be made to fail."""

    def __init__(self) -> None:
        self.status = {"acme": OrgStatus.ACTIVE, "gone": OrgStatus.DISABLED}
        self.calls: list[str] = []
        self.error: Exception | None = None

    def __call__(self, slug: str) -> OrgStatus:
        self.calls.append(slug)
        if self.error is not None:
            raise self.error
        return self.status.get(slug, OrgStatus.UNKNOWN)


pytestmark = pytest.mark.usefixtures("pyspf_through_budget")


@pytest.fixture
def dns() -> FakeDns:
    fake = FakeDns()
    fake.txt("sender.test", f"v=spf1 ip4:{CLIENT_IP} -all")
    fake.txt("soft.test", "v=spf1 ~all")
    fake.txt("fail.test", "v=spf1 ip4:198.51.100.1 -all")
    fake.records[("slow.test", "TXT")] = "timeout"
    fake.txt(RSA.dns_name, RSA.public_record)
    fake.txt(ED.dns_name, ED.public_record)
    fake.txt(THIRD_PARTY.dns_name, THIRD_PARTY.public_record)
    fake.txt("_dmarc.sender.test", "v=DMARC1; p=reject; rua=mailto:d@sender.test")
    fake.txt("_dmarc.fail.test", "v=DMARC1; p=reject")
    fake.txt("_dmarc.soft.test", "v=DMARC1; p=none")
    fake.txt(EVIL_CO_UK.dns_name, EVIL_CO_UK.public_record)
    fake.txt(VICTIM_CO_UK.dns_name, VICTIM_CO_UK.public_record)
    fake.txt("_dmarc.victim.co.uk", "v=DMARC1; p=reject")
    return fake


@pytest.fixture
def orgs() -> Orgs:
    return Orgs()


@pytest.fixture
def make_config(dns: FakeDns, orgs: Orgs) -> Callable[..., MilterConfig]:
    def build(**overrides: Any) -> MilterConfig:
        values: dict[str, Any] = {
            "authserv_id": AUTHSERV,
            "local_part": "orders",
            "domains": (DOMAIN,),
            "directory": OrgDirectory(orgs, ttl=30),
            "dns": dns,
            "dns_timeout": 2.0,
            "dmarc_reject": False,
            "tempfail_on_dns_error": False,
            "max_header_bytes": 1_048_576,
            "psl": PSL,
        }
        values.update(overrides)
        return MilterConfig(**values)

    return build


@pytest.fixture
def run(make_config: Callable[..., MilterConfig]) -> Iterator[Callable[..., Transaction]]:
    """run(raw, sender=..., recipients=[...], **config overrides) -> Transaction."""
    contexts: list[PostfixLikeCtx] = []
    saved = Milter.factory

    def go(
        raw: bytes | None = None,
        sender: str = "buyer@sender.test",
        recipients: tuple[str, ...] = (f"orders+acme@{DOMAIN}",),
        ip: str = CLIENT_IP,
        config: MilterConfig | None = None,
        **overrides: Any,
    ) -> Transaction:
        cfg = config or make_config(**overrides)
        Milter.factory = lambda: OrderflowMilter(cfg)
        ctx = PostfixLikeCtx()
        contexts.append(ctx)
        return ctx.transaction(raw if raw is not None else make_message(), sender, recipients, ip)

    yield go
    Milter.factory = saved
    for ctx in contexts:
        ctx.close()


def ours(result: Transaction) -> dict[str, Any]:
    verdicts = parse_our_verdicts(result.header_values("Authentication-Results"), AUTHSERV)
    assert verdicts is not None, result.headers
    return verdicts


# -- RCPT -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        (f"orders+acme@{DOMAIN}", "continue"),
        ("ORDERS+ACME@ORDERS.TEST", "continue"),
        (f"Orders+Acme@{DOMAIN}.", "continue"),
        (f"orders+nobody@{DOMAIN}", "reject"),
        (f"orders+gone@{DOMAIN}", "reject"),
        (f"orders@{DOMAIN}", "reject"),
        (f"sales+acme@{DOMAIN}", "reject"),
        (f"orders+bad_slug!@{DOMAIN}", "reject"),
        ("someone@elsewhere.test", "continue"),
    ],
)
def test_rcpt_decisions(run: Callable[..., Transaction], recipient: str, expected: str) -> None:
    result = run(recipients=(recipient,))
    step = result.rcpt[0]
    assert step.result == expected
    if expected == "reject":
        assert step.reply == ("550", "5.1.1", "Unknown recipient")
    else:
        assert step.reply is None


def test_null_sender_to_a_known_org_is_accepted(run: Callable[..., Transaction]) -> None:
    result = run(sender="")
    assert result.rcpt[0].result == "continue"
    assert result.eom is not None and result.eom.result == "continue"
    verdicts = ours(result)
    assert verdicts["spf"]["result"] == "none"  # helo of the test has no SPF record
    assert verdicts["spf"]["smtp.helo"] == "mail.sender.test"


def test_database_unreachable_is_451_at_rcpt_and_not_cached(
    run: Callable[..., Transaction], orgs: Orgs, make_config: Callable[..., MilterConfig]
) -> None:
    config = make_config()
    orgs.error = DirectoryUnavailable("PoolTimeout")
    result = run(config=config)
    assert result.rcpt[0].result == "tempfail"
    assert result.rcpt[0].reply == ("451", "4.3.0", "temporary failure, try again later")
    orgs.error = None
    assert run(config=config).rcpt[0].result == "continue"  # the failure was not cached


def test_org_lookups_are_cached_positive_and_negative(
    run: Callable[..., Transaction], orgs: Orgs, make_config: Callable[..., MilterConfig]
) -> None:
    config = make_config()
    recipients = (f"orders+acme@{DOMAIN}", f"orders+nobody@{DOMAIN}") * 3
    result = run(recipients=recipients, config=config)
    assert [s.result for s in result.rcpt] == ["continue", "reject"] * 3
    run(recipients=recipients, config=config)
    assert sorted(orgs.calls) == ["acme", "nobody"]


def test_cache_entries_expire_after_the_ttl(orgs: Orgs) -> None:
    now = [0.0]
    directory = OrgDirectory(orgs, ttl=30, clock=lambda: now[0])
    assert directory.status("acme") == (OrgStatus.ACTIVE, False)
    assert directory.status("acme") == (OrgStatus.ACTIVE, True)
    orgs.status["acme"] = OrgStatus.DISABLED
    now[0] = 31
    assert directory.status("acme") == (OrgStatus.DISABLED, False)


def test_negative_cache_is_bounded(orgs: Orgs) -> None:
    directory = OrgDirectory(orgs, ttl=30, max_entries=100)
    for number in range(1000):
        directory.status(f"random-{number}")
    assert len(directory._entries) == 100


def test_rcpt_decisions_are_counted_by_reason(
    run: Callable[..., Transaction], monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        metrics, "count", lambda name, amount=1, **labels: counted.append((name, labels))
    )
    run(recipients=(f"orders+acme@{DOMAIN}", f"orders+gone@{DOMAIN}", f"orders@{DOMAIN}"))
    decisions = [labels for name, labels in counted if name == "orderflow_milter_decisions_total"]
    assert {"decision": "accept", "reason": "known_org"} in decisions
    assert {"decision": "reject", "reason": "disabled_org"} in decisions
    assert {"decision": "reject", "reason": "no_slug"} in decisions


# -- SPF --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "ip", "expected"),
    [
        ("buyer@sender.test", CLIENT_IP, "pass"),
        ("buyer@fail.test", CLIENT_IP, "fail"),
        ("buyer@soft.test", CLIENT_IP, "softfail"),
        ("buyer@nospf.test", CLIENT_IP, "none"),
        ("buyer@slow.test", CLIENT_IP, "temperror"),
    ],
)
def test_spf_results_are_recorded(
    run: Callable[..., Transaction], sender: str, ip: str, expected: str
) -> None:
    result = run(sender=sender, ip=ip)
    assert result.eom is not None and result.eom.result == "continue"
    spf = ours(result)["spf"]
    assert spf == {"result": expected, "smtp.mailfrom": sender}


def test_spf_temperror_tempfails_at_data_when_configured(run: Callable[..., Transaction]) -> None:
    result = run(sender="buyer@slow.test", tempfail_on_dns_error=True)
    assert result.data is not None
    assert result.data.result == "tempfail"
    assert result.data.reply is not None and result.data.reply[:2] == ("451", "4.4.3")


def test_spf_dns_budget_is_total_not_per_lookup(
    run: Callable[..., Transaction], dns: FakeDns
) -> None:
    # Ten includes, each look-up eating 0.3 s of a 1 s budget: the budget ends the check.
    import time

    includes = " ".join(f"include:i{n}.chain.test" for n in range(9))
    dns.txt("chain.test", f"v=spf1 {includes} -all")
    for n in range(9):
        dns.txt(f"i{n}.chain.test", "v=spf1 ?all")
    original = dns.query

    def slow(name: str, rdtype: str, timeout: float) -> list[Any]:
        time.sleep(0.3)
        return original(name, rdtype, timeout)

    dns.query = slow  # type: ignore[method-assign]
    started = time.monotonic()
    result = run(sender="buyer@chain.test", dns_timeout=1.0)
    assert time.monotonic() - started < 2.5  # SPF ≤ 1 s (+ one look-up), DKIM none, DMARC ≤ 1 s
    assert ours(result)["spf"]["result"] == "temperror"


# -- DKIM -------------------------------------------------------------------------------------


def test_dkim_rsa_pass(run: Callable[..., Transaction]) -> None:
    result = run(RSA.sign(make_message()))
    dkim = ours(result)["dkim"]
    assert len(dkim) == 1
    assert dkim[0]["result"] == "pass"
    assert dkim[0]["header.d"] == "sender.test"
    assert dkim[0]["header.s"] == "sel1"
    assert dkim[0]["header.a"] == "rsa-sha256"


def test_dkim_ed25519_pass(run: Callable[..., Transaction]) -> None:
    result = run(ED.sign(make_message()))
    dkim = ours(result)["dkim"]
    assert [(d["result"], d["header.a"]) for d in dkim] == [("pass", "ed25519-sha256")]


@pytest.mark.parametrize(
    "canonicalize",
    [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"simple", b"relaxed")],
)
def test_dkim_pass_with_folded_and_oddly_spaced_headers(
    run: Callable[..., Transaction], canonicalize: tuple[bytes, bytes]
) -> None:
    raw = make_message(
        subject="a long subject\r\n\tfolded onto a second line",
        extra_headers=[("X-Spacing", "  two leading spaces")],
        body=b"line one  \r\n\r\ntrailing blank lines follow\r\n\r\n\r\n",
    ).replace(b"X-Spacing: ", b"X-Spacing:")
    result = run(RSA.sign(raw, canonicalize=canonicalize))
    assert ours(result)["dkim"][0]["result"] == "pass"


def test_dkim_body_tampered_fails(run: Callable[..., Transaction]) -> None:
    signed = RSA.sign(make_message(body=b"Please deliver 10 widgets.\r\n"))
    tampered = signed.replace(b"10 widgets", b"99 widgets")
    dkim = ours(run(tampered))["dkim"]
    assert dkim == [
        {
            "result": "fail",
            "reason": "body hash mismatch",
            "header.d": "sender.test",
            "header.s": "sel1",
            "header.a": "rsa-sha256",
            "header.b": dkim[0]["header.b"],
        }
    ]


def test_dkim_header_tampered_fails(run: Callable[..., Transaction]) -> None:
    tampered = RSA.sign(make_message()).replace(b"PO 4711", b"PO 9999")
    assert ours(run(tampered))["dkim"][0]["result"] == "fail"


def test_dkim_key_missing_is_permerror(run: Callable[..., Transaction], dns: FakeDns) -> None:
    del dns.records[(RSA.dns_name, "TXT")]
    dkim = ours(run(RSA.sign(make_message())))["dkim"]
    assert (dkim[0]["result"], dkim[0]["reason"]) == ("permerror", "no key for signature")


@pytest.mark.parametrize(
    ("record", "reason"),
    [("v=DKIM1; k=rsa; p=", "key revoked"), ("v=DKIM1; k=rsa; p=bm90IGEga2V5", "unusable key")],
)
def test_dkim_unusable_keys_are_permerror(
    run: Callable[..., Transaction], dns: FakeDns, record: str, reason: str
) -> None:
    dns.txt(RSA.dns_name, record)
    dkim = ours(run(RSA.sign(make_message())))["dkim"]
    assert (dkim[0]["result"], dkim[0]["reason"]) == ("permerror", reason)


def test_dkim_key_lookup_timeout_is_temperror(
    run: Callable[..., Transaction], dns: FakeDns
) -> None:
    dns.records[(RSA.dns_name, "TXT")] = "timeout"
    dkim = ours(run(RSA.sign(make_message())))["dkim"]
    assert dkim[0]["result"] == "temperror"


def test_dkim_temperror_tempfails_at_eom_when_configured(
    run: Callable[..., Transaction], dns: FakeDns
) -> None:
    dns.records[(RSA.dns_name, "TXT")] = "timeout"
    result = run(RSA.sign(make_message()), tempfail_on_dns_error=True)
    assert result.eom is not None and result.eom.result == "tempfail"
    assert result.eom.reply is not None and result.eom.reply[:2] == ("451", "4.4.3")


def test_two_signatures_each_get_a_verdict(run: Callable[..., Transaction]) -> None:
    raw = make_message()
    signed = THIRD_PARTY.sign(RSA.sign(raw))
    dkim = ours(run(signed))["dkim"]
    assert [(d["result"], d["header.d"]) for d in dkim] == [
        ("pass", "esp.example"),
        ("pass", "sender.test"),
    ]


def test_two_signatures_one_broken(run: Callable[..., Transaction], dns: FakeDns) -> None:
    del dns.records[(THIRD_PARTY.dns_name, "TXT")]
    signed = ED.sign(THIRD_PARTY.sign(make_message()))
    dkim = ours(run(signed))["dkim"]
    assert [(d["result"], d["header.d"]) for d in dkim] == [
        ("pass", "sender.test"),
        ("permerror", "esp.example"),
    ]


def test_unsigned_message_is_dkim_none(run: Callable[..., Transaction]) -> None:
    assert ours(run())["dkim"] == [{"result": "none"}]


def test_rsa_sha1_is_not_accepted(run: Callable[..., Transaction]) -> None:
    import dkim as dkimpy

    raw = make_message()
    header = dkimpy.sign(raw, b"sel1", b"sender.test", RSA.private, signature_algorithm=b"rsa-sha1")
    dkim = ours(run(header + raw))["dkim"]
    assert dkim[0]["result"] == "policy"


def test_large_body_streams_through_in_small_chunks(run: Callable[..., Transaction]) -> None:
    body = b"".join(b"line %06d of an order with some words in it\r\n" % n for n in range(60_000))
    signed = RSA.sign(make_message(body=body))
    assert len(signed) > 2_500_000
    assert ours(run(signed))["dkim"][0]["result"] == "pass"


# -- DMARC ------------------------------------------------------------------------------------


def test_dmarc_pass_with_aligned_dkim_and_spf(run: Callable[..., Transaction]) -> None:
    dmarc = ours(run(RSA.sign(make_message())))["dmarc"]
    assert dmarc == {"result": "pass", "header.from": "sender.test", "policy.dmarc": "reject"}


def test_dmarc_pass_with_relaxed_alignment_of_a_subdomain(
    run: Callable[..., Transaction], dns: FakeDns
) -> None:
    dns.txt("bounces.sender.test", f"v=spf1 ip4:{CLIENT_IP} -all")
    result = run(sender="b@bounces.sender.test")
    assert ours(result)["dmarc"]["result"] == "pass"


def test_dmarc_fail_with_p_reject_is_recorded_under_record_policy(
    run: Callable[..., Transaction],
) -> None:
    # Signed by a third party only, sent from an IP the From domain does not authorize.
    raw = make_message(from_addr="ceo@fail.test")
    result = run(THIRD_PARTY.sign(raw), sender="bounce@esp.example")
    assert result.eom is not None and result.eom.result == "continue"
    dmarc = ours(result)["dmarc"]
    assert dmarc["result"] == "fail"
    assert dmarc["policy.dmarc"] == "reject"
    assert dmarc["header.from"] == "fail.test"


def test_dmarc_fail_with_p_reject_is_rejected_under_reject_policy(
    run: Callable[..., Transaction],
) -> None:
    raw = make_message(from_addr="ceo@fail.test")
    result = run(THIRD_PARTY.sign(raw), sender="bounce@esp.example", dmarc_reject=True)
    assert result.eom is not None and result.eom.result == "reject"
    assert result.eom.reply == ("550", "5.7.1", "rejected by the DMARC policy of fail.test")


def test_dmarc_pass_with_p_reject_is_accepted_under_reject_policy(
    run: Callable[..., Transaction],
) -> None:
    result = run(RSA.sign(make_message()), dmarc_reject=True)
    assert result.eom is not None and result.eom.result == "continue"


def test_dmarc_fail_with_p_none_is_accepted_under_reject_policy(
    run: Callable[..., Transaction],
) -> None:
    result = run(make_message(from_addr="x@soft.test"), sender="x@soft.test", dmarc_reject=True)
    assert result.eom is not None and result.eom.result == "continue"
    assert ours(result)["dmarc"]["result"] == "fail"


def test_dmarc_subdomain_policy_from_the_organizational_domain(
    run: Callable[..., Transaction], dns: FakeDns
) -> None:
    dns.txt("_dmarc.parent.test", "v=DMARC1; p=none; sp=reject")
    result = run(
        make_message(from_addr="x@shop.parent.test"), sender="x@elsewhere.test", dmarc_reject=True
    )
    assert result.eom is not None and result.eom.result == "reject"


def test_dmarc_pct_zero_is_never_rejected(run: Callable[..., Transaction], dns: FakeDns) -> None:
    dns.records.pop(("_dmarc.fail.test", "TXT"))
    dns.txt("_dmarc.fail.test", "v=DMARC1; p=reject; pct=0")
    raw = make_message(from_addr="ceo@fail.test")
    result = run(raw, sender="x@elsewhere.test", dmarc_reject=True)
    assert result.eom is not None and result.eom.result == "continue"


def test_dmarc_policy_lookup_timeout_is_temperror(
    run: Callable[..., Transaction], dns: FakeDns
) -> None:
    dns.records[("_dmarc.sender.test", "TXT")] = "timeout"
    assert ours(run())["dmarc"]["result"] == "temperror"


def test_dmarc_without_a_record_is_none(run: Callable[..., Transaction]) -> None:
    result = run(make_message(from_addr="a@nodmarc.test"), sender="a@nodmarc.test")
    assert ours(result)["dmarc"]["result"] == "none"


def test_item10_dmarc_aligns_by_the_public_suffix_list(run: Callable[..., Transaction]) -> None:
    """co.uk is a public suffix: evil.co.uk's DKIM pass must not align with a From of
    victim.co.uk (the old "last two labels" fallback made both "co.uk"), while a signature
    of mail.victim.co.uk does align (same organizational domain victim.co.uk)."""
    raw = make_message(from_addr="ceo@victim.co.uk")
    forged = ours(run(EVIL_CO_UK.sign(raw), sender="x@elsewhere.test"))
    assert forged["dkim"][0]["result"] == "pass"
    assert forged["dmarc"]["result"] == "fail"
    refused = run(EVIL_CO_UK.sign(raw), sender="x@elsewhere.test", dmarc_reject=True)
    assert refused.eom is not None and refused.eom.result == "reject"
    genuine = run(VICTIM_CO_UK.sign(raw), sender="x@elsewhere.test", dmarc_reject=True)
    assert ours(genuine)["dmarc"]["result"] == "pass"
    assert genuine.eom is not None and genuine.eom.result == "continue"


@pytest.mark.parametrize(
    "from_headers",
    [
        ["a@sender.test, b@other.test"],  # one header, two domains
        ["a@sender.test", "b@other.test"],  # two headers
        ["a@sender.test"] * 6 + ["b@other.test"],  # beyond any count of headers kept
        ["b@other.test"] + ["a@sender.test"] * 6,
    ],
)
def test_item12_more_than_one_from_domain_is_dmarc_fail(
    run: Callable[..., Transaction], from_headers: list[str]
) -> None:
    """Several From domains: fail, whatever the header count, and the strictest policy of
    them applies, so a second From cannot get a forged p=reject domain past `reject`."""
    raw = make_message(
        from_addr=from_headers[0], extra_headers=[("From", value) for value in from_headers[1:]]
    )
    signed = RSA.sign(raw)  # a valid, aligned-looking signature of sender.test changes nothing
    recorded = ours(run(signed))["dmarc"]
    assert recorded["result"] == "fail"
    assert recorded["reason"] == "more than one From domain"
    assert recorded["policy.dmarc"] == "reject"
    refused = run(signed, dmarc_reject=True)
    assert refused.eom is not None and refused.eom.result == "reject"
    assert refused.eom.reply == ("550", "5.7.1", "rejected by the DMARC policy of sender.test")


def test_item12_several_from_headers_of_one_domain_are_evaluated(
    run: Callable[..., Transaction],
) -> None:
    raw = make_message(extra_headers=[("From", "other@sender.test")])
    assert ours(run(RSA.sign(raw)))["dmarc"]["result"] == "pass"


def test_item12_dkim_l_recorded_and_policy(run: Callable[..., Transaction]) -> None:
    """l= is recorded (header.l, and on the row through parse_our_verdicts); content appended
    after the signed length is named in the reason, and under ORDERFLOW_DKIM_L_POLICY=fail
    the signature fails (and with it DMARC, when nothing else aligns)."""
    signed = RSA.sign(make_message(), length=True)
    whole = ours(run(signed, sender="x@elsewhere.test"))["dkim"][0]
    assert whole["result"] == "pass" and "reason" not in whole
    assert int(whole["header.l"]) == len(b"Please deliver 10 widgets.\r\n")
    extra = b"Bank account changed: DE00 0000 0000 0000\r\n"
    appended = signed + extra
    unsigned = f"l= leaves {len(extra)} body bytes unsigned"
    recorded = ours(run(appended, sender="x@elsewhere.test"))
    assert recorded["dkim"][0]["result"] == "pass"
    assert recorded["dkim"][0]["reason"] == unsigned
    assert recorded["dkim"][0]["header.l"] == whole["header.l"]
    failed = ours(run(appended, sender="x@elsewhere.test", dkim_l_policy="fail"))
    assert failed["dkim"][0]["result"] == "fail"
    assert failed["dkim"][0]["reason"] == unsigned
    assert failed["dmarc"]["result"] == "fail"
    exact = ours(run(signed, sender="x@elsewhere.test", dkim_l_policy="fail"))
    assert exact["dkim"][0]["result"] == "pass"  # l= covering the whole body is fine


# -- Authentication-Results --------------------------------------------------------------------


FORGED = [
    f" {AUTHSERV}; spf=pass smtp.mailfrom=ceo@bank.test; dkim=pass header.d=bank.test",
    f" {AUTHSERV.upper()}; dkim=pass header.d=bank.test",
    f" (a comment) {AUTHSERV}\n\t(another) ; dmarc=pass header.from=bank.test",
    f'  "{AUTHSERV}"; dkim=pass',
    f" {AUTHSERV}.; dkim=pass",
    f" {AUTHSERV} 1; dkim=pass",
    f" {AUTHSERV}; this is not a valid ((( header at all",
    f" {AUTHSERV}",
]


def test_forged_authentication_results_are_removed_and_ours_added(
    run: Callable[..., Transaction],
) -> None:
    other = " relay.example.net; spf=pass smtp.mailfrom=x@example.net"
    extra = [("Authentication-Results", value) for value in FORGED[:4]]
    extra.insert(2, ("Authentication-Results", other))
    extra += [("Authentication-Results", value) for value in FORGED[4:]]
    raw = make_message(extra_headers=[(n, v.strip()) for n, v in extra])
    # Keep the exact spacing of each forged value (make_message adds ": ").
    for value in FORGED:
        raw = raw.replace(
            b"Authentication-Results: " + value.strip().encode(),
            b"Authentication-Results:" + value.replace("\n", "\r\n").encode(),
        )
    result = run(raw)
    values = result.header_values("Authentication-Results")
    assert len(values) == 2
    assert values[1].strip() == other.strip()
    # Ours directly below Postfix's own Received header: the trace of this hop.
    assert [name for name, _ in result.headers[:2]] == ["Received", "Authentication-Results"]
    verdicts = ours(result)
    assert verdicts["spf"]["smtp.mailfrom"] == "buyer@sender.test"
    assert verdicts["dkim"] == [{"result": "none"}]


def test_header_without_forgery_is_added_once(run: Callable[..., Transaction]) -> None:
    result = run(RSA.sign(make_message()))
    values = result.header_values("Authentication-Results")
    assert len(values) == 1
    assert values[0].startswith(f" {AUTHSERV};\n\tspf=pass")


def test_sender_controlled_values_cannot_inject_results(
    run: Callable[..., Transaction], dns: FakeDns
) -> None:
    dns.txt("evil.test", f"v=spf1 ip4:{CLIENT_IP} -all")
    result = run(sender="a;dkim=pass(x)@evil.test")
    verdicts = ours(result)
    assert verdicts["spf"] == {"result": "pass", "smtp.mailfrom": "@evil.test"}
    assert verdicts["dkim"] == [{"result": "none"}]


# -- failures ---------------------------------------------------------------------------------


def test_exception_in_rcpt_is_451_not_a_crash(run: Callable[..., Transaction], orgs: Orgs) -> None:
    orgs.error = RuntimeError("a bug")
    result = run()
    assert result.rcpt[0].result == "tempfail"
    assert result.rcpt[0].reply == ("451", "4.3.0", "temporary failure, try again later")


def test_exception_in_a_noreply_callback_is_451_at_end_of_message(
    run: Callable[..., Transaction], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> bool:
        raise ValueError("a bug in header handling")

    monkeypatch.setattr(handler_module, "claims", broken)
    raw = make_message(extra_headers=[("Authentication-Results", "x; none")])
    result = run(raw)
    assert result.eom is not None
    assert result.eom.result == "tempfail"
    assert result.eom.reply == ("451", "4.3.0", "temporary failure, try again later")
    assert result.header_values("Authentication-Results") == [" x; none"]  # nothing changed


def test_exception_at_end_of_message_is_451(
    run: Callable[..., Transaction], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug in DMARC")

    monkeypatch.setattr(handler_module, "check_dmarc", broken)
    result = run()
    assert result.eom is not None and result.eom.result == "tempfail"


def test_failure_in_one_message_does_not_poison_the_next(
    make_config: Callable[..., MilterConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config()
    saved = Milter.factory
    Milter.factory = lambda: OrderflowMilter(config)
    try:
        ctx = PostfixLikeCtx()
        calls = [0]
        real = handler_module.check_dmarc

        def fail_once(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                raise KeyError("once")
            return real(*args, **kwargs)

        monkeypatch.setattr(handler_module, "check_dmarc", fail_once)
        first = ctx.transaction(make_message(), "buyer@sender.test", [f"orders+acme@{DOMAIN}"])
        second = ctx.transaction(
            make_message(), "buyer@sender.test", [f"orders+acme@{DOMAIN}"], connected=True
        )
        assert first.eom is not None and first.eom.result == "tempfail"
        assert second.eom is not None and second.eom.result == "continue"
        ctx.close()
    finally:
        Milter.factory = saved


def test_state_is_reset_at_mail_from(make_config: Callable[..., MilterConfig]) -> None:
    config = make_config()
    saved = Milter.factory
    Milter.factory = lambda: OrderflowMilter(config)
    try:
        ctx = PostfixLikeCtx()
        forged = make_message(extra_headers=[("Authentication-Results", f"{AUTHSERV}; dkim=pass")])
        ctx.transaction(forged, "a@sender.test", [f"orders+acme@{DOMAIN}"])
        second = ctx.transaction(
            RSA.sign(make_message()), "", [f"orders+acme@{DOMAIN}"], connected=True
        )
        # No removal carried over from the first message, and the second's own verdicts.
        assert [op[0] for op in ctx.header_ops] == ["insert"]
        verdicts = ours(second)
        assert verdicts["spf"]["result"] == "none"
        assert verdicts["dkim"][0]["result"] == "pass"
        ctx.close()
    finally:
        Milter.factory = saved


def test_noreply_callbacks_negotiate_noreply() -> None:
    # Observation-only callbacks must not make Postfix wait for an answer.
    mask = OrderflowMilter.protocol_mask()
    for bit in (
        Milter.P_NR_CONN,
        Milter.P_NR_HELO,
        Milter.P_NR_HDR,
        Milter.P_NR_EOH,
        Milter.P_NR_BODY,
    ):
        assert not mask & bit
    assert mask & Milter.P_NR_RCPT  # RCPT answers
    assert mask & Milter.P_NR_MAIL  # MAIL answers: 452 4.3.1 when the disk is short (issue 13)
    assert not mask & Milter.P_HDR_LEADSPC  # header values arrive byte-exact


def test_signatures_beyond_the_limit_are_not_verified(run: Callable[..., Transaction]) -> None:
    from orderflow_ingest.milter.dkim_check import MAX_SIGNATURES

    signed = make_message()
    for _ in range(MAX_SIGNATURES + 1):
        signed = RSA.sign(signed)
    dkim = ours(run(signed))["dkim"]
    assert [d["result"] for d in dkim] == ["pass"] * MAX_SIGNATURES + ["policy"]
