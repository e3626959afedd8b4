"""Pure pieces of the API: the key format and its checksum, signed download links, and the
settings that keep the API on loopback and its links short-lived."""

from __future__ import annotations

import socket
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderflow_ingest import keys
from orderflow_ingest.api import links
from orderflow_ingest.ops.doctor import WARN, check_api
from orderflow_ingest.settings import SettingsError, load_settings

BASE = {
    "ORDERFLOW_DATABASE_URL": "postgresql://app@127.0.0.1/orderflow",
    "ORDERFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
    "ORDERFLOW_S3_BUCKET": "orderflow",
    "ORDERFLOW_INGEST_DOMAINS": "orderflow.example.com",
}


def test_a_generated_key_has_the_prefix_and_a_valid_checksum() -> None:
    secret = keys.generate_secret()
    assert secret.startswith("ofi_live_")
    assert len(secret) == len("ofi_live_") + 32 + 6
    assert keys.well_formed(secret)
    random_part = secret[len("ofi_live_") : -6]
    value = 0
    for char in secret[-6:]:
        value = value * 62 + keys.ALPHABET.index(char)
    assert value == zlib.crc32(random_part.encode())


def test_generated_keys_differ() -> None:
    assert len({keys.generate_secret() for _ in range(200)}) == 200


@given(st.integers(min_value=0, max_value=37), st.sampled_from(keys.ALPHABET))
def test_one_changed_character_fails_the_checksum(position: int, char: str) -> None:
    secret = keys.generate_secret()
    index = len("ofi_live_") + position
    changed = secret[:index] + char + secret[index + 1 :]
    if changed != secret:
        assert not keys.well_formed(changed)


@pytest.mark.parametrize(
    "text", ["", "ofi_live_", "ghp_" + "a" * 36, "ofi_test_" + "a" * 38, "ofi_live_" + "!" * 38]
)
def test_foreign_or_malformed_tokens_are_not_keys(text: str) -> None:
    assert not keys.well_formed(text)


KEY = b"k" * 32


def _grant(expires: int) -> links.Grant:
    return links.Grant("raw", "7c9e6679-7425-40de-944b-e07fc1f90ae7", "org", expires)


def test_a_signed_link_verifies_until_it_expires() -> None:
    token = links.sign(KEY, _grant(1_000_300))
    assert links.verify(KEY, token, now=1_000_000) == _grant(1_000_300)
    assert links.verify(KEY, token, now=1_000_300) is None
    assert links.verify(b"x" * 32, token, now=1_000_000) is None


def test_a_link_longer_than_ten_minutes_is_refused() -> None:
    assert links.verify(KEY, links.sign(KEY, _grant(1_000_601)), now=1_000_000) is None


@given(st.text(max_size=200))
def test_any_other_token_is_refused(token: str) -> None:
    assert links.verify(KEY, token, now=0) is None


def test_a_tampered_payload_is_refused() -> None:
    _payload, mac = links.sign(KEY, _grant(1_000_300)).split(".")
    other = links.sign(KEY, links.Grant("document", "x", "org", 1_000_300)).split(".")[0]
    assert links.verify(KEY, f"{other}.{mac}", now=1_000_000) is None


def test_the_api_refuses_a_non_loopback_address_unless_allowed() -> None:
    with pytest.raises(SettingsError, match="ORDERFLOW_API_LISTEN"):
        load_settings("/dev/null", {**BASE, "ORDERFLOW_API_LISTEN": "0.0.0.0:8480"})
    allowed = load_settings(
        "/dev/null",
        {**BASE, "ORDERFLOW_API_LISTEN": "0.0.0.0:8480", "ORDERFLOW_API_ALLOW_PUBLIC_BIND": "1"},
    )
    assert allowed.api_listen == "0.0.0.0:8480"
    assert load_settings("/dev/null", BASE).api_listen == "127.0.0.1:8480"


@pytest.mark.parametrize("ttl", ["0", "601", "3600"])
def test_download_links_may_not_live_longer_than_ten_minutes(ttl: str) -> None:
    with pytest.raises(SettingsError, match="ORDERFLOW_API_LINK_TTL"):
        load_settings("/dev/null", {**BASE, "ORDERFLOW_API_LINK_TTL": ttl})


def test_event_retention_is_at_least_one_day() -> None:
    with pytest.raises(SettingsError, match="ORDERFLOW_EVENT_RETENTION_DAYS"):
        load_settings("/dev/null", {**BASE, "ORDERFLOW_EVENT_RETENTION_DAYS": "0"})
    assert load_settings("/dev/null", BASE).event_retention_days == 30


def test_doctor_warns_when_the_api_does_not_answer() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    check = check_api(load_settings("/dev/null", BASE), f"127.0.0.1:{port}")
    assert check.status == WARN
    assert "api" in check.detail
