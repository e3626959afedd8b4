"""The milter's RCPT decision for custom domains (milter/recipients.py): pure, lookups faked."""

from __future__ import annotations

import pytest

from orderflow_ingest.milter.recipients import (
    DOMAIN_MX_LOST,
    DOMAIN_PENDING,
    DOMAIN_SUSPENDED,
    CustomDomain,
    DirectoryUnavailable,
    OrgDirectory,
    OrgStatus,
    decide,
)

DOMAINS = ("orderflow.test",)


def custom(state: str, org: OrgStatus = OrgStatus.ACTIVE, **kw: object) -> CustomDomain:
    values: dict[str, object] = {"accept_all": False, "local_parts": ("orders", "buyers")}
    values.update(kw)
    return CustomDomain(state, "acme", org, **values)  # type: ignore[arg-type]


def directory(
    table: dict[str, CustomDomain | None], calls: list[str] | None = None
) -> OrgDirectory:
    def lookup(domain: str) -> CustomDomain | None:
        if calls is not None:
            calls.append(domain)
        if domain == "down.test":
            raise DirectoryUnavailable("OperationalError")
        return table.get(domain)

    return OrgDirectory(lambda slug: OrgStatus.ACTIVE, ttl=30, domain_lookup=lookup)


@pytest.mark.parametrize(
    ("state", "recipient", "decision", "reason", "reply"),
    [
        ("verified", "orders@po.acme.test", "accept", "custom_domain", None),
        ("verified", "Buyers+urgent@PO.ACME.TEST", "accept", "custom_domain", None),
        ("verified", "someone@po.acme.test", "reject", "unknown_local_part", None),
        ("mx_lost", "orders@po.acme.test", "tempfail", "domain_mx_lost", DOMAIN_MX_LOST),
        ("suspended", "orders@po.acme.test", "reject", "domain_suspended", DOMAIN_SUSPENDED),
        ("pending", "orders@po.acme.test", "tempfail", "domain_pending", DOMAIN_PENDING),
        ("removed", "orders@po.acme.test", "reject", "domain_removed", None),
    ],
)
def test_states_and_local_parts(
    state: str, recipient: str, decision: str, reason: str, reply: object
) -> None:
    verdict = decide(recipient, "orders", DOMAINS, directory({"po.acme.test": custom(state)}))
    assert (verdict.decision, verdict.reason, verdict.reply) == (decision, reason, reply)
    assert verdict.slug == "acme"


def test_replies_are_the_issue_s() -> None:
    assert (DOMAIN_MX_LOST.code, DOMAIN_MX_LOST.status) == ("451", "4.7.1")
    assert DOMAIN_MX_LOST.temporary
    assert (DOMAIN_SUSPENDED.code, DOMAIN_SUSPENDED.status) == ("550", "5.7.1")
    assert (DOMAIN_PENDING.code, DOMAIN_PENDING.status) == ("451", "4.7.1")


def test_accept_all_and_disabled_org() -> None:
    table = {
        "all.test": custom("verified", accept_all=True, local_parts=()),
        "off.test": custom("verified", OrgStatus.DISABLED),
    }
    assert decide("anything@all.test", "orders", DOMAINS, directory(table)).decision == "accept"
    verdict = decide("orders@off.test", "orders", DOMAINS, directory(table))
    assert (verdict.decision, verdict.reason) == ("reject", "disabled_org")


@pytest.mark.parametrize("org", [OrgStatus.ACTIVE, OrgStatus.DISABLED])
@pytest.mark.parametrize("accept_all", [False, True])
def test_role_mailboxes_of_a_verified_custom_domain_are_accepted(
    org: OrgStatus, accept_all: bool
) -> None:
    """RFC 5321 §4.5.1: postmaster@ of every domain we accept mail for; Postfix routes it to
    the operator (postfix-config/orderflow_custom_role_mailboxes.cf), never to the org."""
    table = {"po.acme.test": custom("verified", org, accept_all=accept_all)}
    for recipient in ("postmaster@po.acme.test", "<Abuse@PO.ACME.TEST>"):
        verdict = decide(recipient, "orders", DOMAINS, directory(table))
        assert (verdict.decision, verdict.reason, verdict.slug) == ("accept", "role_mailbox", None)


@pytest.mark.parametrize(
    ("state", "decision"),
    [
        ("mx_lost", "tempfail"),
        ("suspended", "reject"),
        ("pending", "tempfail"),
        ("removed", "reject"),
    ],
)
def test_role_mailboxes_follow_a_domain_that_is_not_verified(state: str, decision: str) -> None:
    verdict = decide(
        "postmaster@po.acme.test", "orders", DOMAINS, directory({"po.acme.test": custom(state)})
    )
    assert verdict.decision == decision


def test_unknown_domain_is_postfix_s_to_decide_and_ingest_domain_unchanged() -> None:
    calls: list[str] = []
    table = directory({}, calls)
    assert decide("x@elsewhere.test", "orders", DOMAINS, table).decision == "continue"
    assert decide("orders+acme@orderflow.test", "orders", DOMAINS, table).reason == "known_org"
    assert calls == ["elsewhere.test"]  # ingest domains never ask for a custom domain


def test_database_down_is_451_and_never_cached() -> None:
    calls: list[str] = []
    table = directory({}, calls)
    for _ in range(3):
        verdict = decide("orders@down.test", "orders", DOMAINS, table)
        assert (verdict.decision, verdict.reason) == ("tempfail", "database_unavailable")
    assert calls == ["down.test"] * 3


def test_answers_are_cached_for_the_ttl() -> None:
    now = [0.0]
    calls: list[str] = []

    def lookup(domain: str) -> CustomDomain | None:
        calls.append(domain)
        return custom("verified")

    cache = OrgDirectory(
        lambda s: OrgStatus.ACTIVE, ttl=30, clock=lambda: now[0], domain_lookup=lookup
    )
    for _ in range(5):
        assert cache.custom_domain("po.acme.test")[0] is not None
    assert len(calls) == 1
    now[0] = 31
    cache.custom_domain("po.acme.test")
    assert len(calls) == 2


def test_without_a_domain_lookup_other_domains_continue() -> None:
    plain = OrgDirectory(lambda slug: OrgStatus.ACTIVE, ttl=30)
    assert decide("orders@po.acme.test", "orders", DOMAINS, plain).decision == "continue"
