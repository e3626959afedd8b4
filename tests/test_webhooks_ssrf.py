"""The SSRF guard: internal addresses are refused after resolution, IPv4 and IPv6, however
they are spelled, unless the allow-list names them."""

from __future__ import annotations

import pytest

from orderflow_ingest.webhooks.ssrf import AddressPolicy, Refused, is_public

INTERNAL = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.100.100.200",  # Alibaba metadata (CGNAT)
    "168.63.129.16",  # Azure wire server
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "::ffff:127.0.0.1",  # v4-mapped
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses_are_not_public(address: str) -> None:
    import ipaddress

    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_addresses_are_public(address: str) -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address(address))


def fixed(mapping: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return mapping[host]

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f.1/",  # 127.0.0.1 in hex shorthand
        "http://127.1/",
        "http://localhost:9/",
    ],
)
def test_literal_and_odd_spellings_of_loopback_are_refused(url: str) -> None:
    with pytest.raises(Refused):
        AddressPolicy().vet(url, require_https=False)


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    policy = AddressPolicy(resolver=fixed({"hooks.example.com": ["10.0.0.5"]}))
    with pytest.raises(Refused, match=r"10\.0\.0\.5"):
        policy.vet("https://hooks.example.com/x")


def test_a_name_resolving_to_public_and_private_addresses_is_refused() -> None:
    policy = AddressPolicy(resolver=fixed({"hooks.example.com": ["93.184.215.14", "fd12::1"]}))
    with pytest.raises(Refused, match="fd12::1"):
        policy.vet("https://hooks.example.com/x")


def test_a_public_name_is_vetted_with_its_addresses() -> None:
    policy = AddressPolicy(resolver=fixed({"hooks.example.com": ["93.184.215.14"]}))
    target = policy.vet("https://hooks.example.com:8443/in?x=1")
    assert target.addresses == ("93.184.215.14",)
    assert (target.host, target.port, target.path) == ("hooks.example.com", 8443, "/in?x=1")
    assert target.host_header == "hooks.example.com:8443"


def test_allow_list_admits_cidrs_and_hosts() -> None:
    policy = AddressPolicy(
        ["127.0.0.1/32", "erp.internal"],
        resolver=fixed(
            {"erp.internal": ["10.9.9.9"], "127.0.0.1": ["127.0.0.1"], "127.0.0.2": ["127.0.0.2"]}
        ),
    )
    assert policy.vet("http://127.0.0.1:8080/", require_https=False).addresses == ("127.0.0.1",)
    assert policy.vet("https://erp.internal/").addresses == ("10.9.9.9",)
    with pytest.raises(Refused):
        policy.vet("http://127.0.0.2/", require_https=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/", "https://"),
        ("ftp://hooks.example.com/", "https://"),
        ("https://user:pw@hooks.example.com/", "user name"),
        ("https://hooks.example.com/#x", "fragment"),
        ("https:///nohost", "no host"),
        ("https://hooks.example.com/a b", "spaces"),
    ],
)
def test_malformed_or_plain_http_urls_are_refused(url: str, reason: str) -> None:
    policy = AddressPolicy(resolver=fixed({"hooks.example.com": ["93.184.215.14"]}))
    with pytest.raises(Refused, match=reason):
        policy.vet(url)


def test_unresolvable_names_are_refused() -> None:
    with pytest.raises(Refused, match="cannot resolve"):
        AddressPolicy().vet("https://no-such-host.invalid/")


def test_internationalised_names_are_resolved_as_their_a_label() -> None:
    policy = AddressPolicy(resolver=fixed({"xn--bcher-kva.example": ["93.184.215.14"]}))
    assert policy.vet("https://bücher.example/in").host == "xn--bcher-kva.example"
    with pytest.raises(Refused, match="internationalised"):
        policy.vet("https://ü" + "a" * 70 + ".example/")


def test_a_resolver_error_of_any_kind_is_a_refusal() -> None:
    def broken(host: str, port: int) -> list[str]:
        raise UnicodeError("label empty or too long")

    with pytest.raises(Refused, match="cannot resolve"):
        AddressPolicy(resolver=broken).vet("https://hooks.example.com/")
