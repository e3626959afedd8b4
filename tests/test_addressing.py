"""Plus-addressing (spec user story 2, FR-002; testing strategy: unit tests)."""

import pytest

from orderflow_ingest.addressing import is_our_domain, org_slug, split_address

DOMAINS = ("orderflow.example.com", "orders.example.net")


@pytest.mark.parametrize(
    ("address", "slug"),
    [
        ("orders+acme@orderflow.example.com", "acme"),
        ("<orders+acme@orderflow.example.com>", "acme"),
        ("Orders+ACME@OrderFlow.Example.Com", "acme"),  # case-insensitive slugs and domain
        ("orders+acme-gmbh@orders.example.net", "acme-gmbh"),
        ("orders+acme@orderflow.example.com.", "acme"),  # trailing root dot
    ],
)
def test_valid_plus_addresses_name_their_org(address: str, slug: str) -> None:
    assert org_slug(address, "orders", DOMAINS) == slug


@pytest.mark.parametrize(
    "address",
    [
        "orders@orderflow.example.com",  # scenario 3: no plus part → rejected, no default org
        "orders+@orderflow.example.com",
        "sales+acme@orderflow.example.com",  # wrong local part
        "orders+acme@evil.example.org",  # not our domain
        "orders+ac me@orderflow.example.com",
        "orders+-acme@orderflow.example.com",
        "orders+acme+x@orderflow.example.com",
        "orders+../etc@orderflow.example.com",
        "orders+$(reboot)@orderflow.example.com",  # shell metacharacters never form a slug
        "-orders+acme@orderflow.example.com",
        "orders+acme",
        "",
        "@orderflow.example.com",
        "orders+" + "a" * 64 + "@orderflow.example.com",  # slug longer than 63
    ],
)
def test_anything_else_names_no_org(address: str) -> None:
    assert org_slug(address, "orders", DOMAINS) is None


def test_split_and_domain_membership() -> None:
    assert split_address("a@B.example") == ("a", "b.example")
    assert split_address("no-at-sign") is None
    assert is_our_domain("x@ORDERFLOW.example.com", DOMAINS)
    assert not is_our_domain("x@example.com", DOMAINS)


def test_local_part_is_configurable() -> None:
    assert org_slug("po+acme@orderflow.example.com", "po", DOMAINS) == "acme"
    assert org_slug("orders+acme@orderflow.example.com", "po", DOMAINS) is None
