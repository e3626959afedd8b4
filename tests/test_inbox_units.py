"""Pure logic of the web inbox: the search language, plain words, the cookie and header
policy, and its settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi import Response

from orderflow_ingest.api.message_queries import TERM_SQL, SearchTerm
from orderflow_ingest.inbox import words
from orderflow_ingest.inbox.search import SearchError, parse
from orderflow_ingest.inbox.users import ROLE_PERMISSIONS
from orderflow_ingest.inbox.web import csp, set_session_cookie
from orderflow_ingest.keys import PERMISSIONS
from orderflow_ingest.settings import SettingsError, load_settings

REQUIRED = {
    "ORDERFLOW_DATABASE_URL": "postgresql://x",
    "ORDERFLOW_REDIS_URL": "redis://x",
    "ORDERFLOW_S3_BUCKET": "b",
    "ORDERFLOW_INGEST_DOMAINS": "orders.example",
}


def test_search_parses_every_filter_quoted_phrases_and_negation() -> None:
    where = parse(
        'from:acme to:orders subject:"PO 42" message-id:<a@b> status:parsed has:document'
        " filename:PO-1.pdf after:2026-11-01 before:2026-12-01 larger:20k -smaller:5M word"
    )
    assert where.terms == (
        SearchTerm("from", "acme"),
        SearchTerm("to", "orders"),
        SearchTerm("subject", "PO 42"),
        SearchTerm("message-id", "<a@b>"),
        SearchTerm("status", "PARSED"),
        SearchTerm("has:document", None),
        SearchTerm("filename", "PO-1.pdf"),
        SearchTerm("after", datetime(2026, 11, 1, tzinfo=UTC)),
        SearchTerm("before", datetime(2026, 12, 1, tzinfo=UTC)),
        SearchTerm("larger", 20 * 1024),
        SearchTerm("smaller", 5 * 1024**2, negate=True),
        SearchTerm("text", "word"),
    )
    assert parse('-"a phrase"').terms == (SearchTerm("text", "a phrase", negate=True),)
    assert parse("   ").terms == ()


def test_every_search_field_has_its_one_sql_condition() -> None:
    fields = {
        term.field
        for term in parse(
            "from:a to:a subject:a message-id:a status:failed has:document filename:a"
            " after:2026-01-01 before:2026-01-01 larger:1 smaller:1 a"
        ).terms
    }
    assert fields == set(TERM_SQL)


@pytest.mark.parametrize(
    ("query", "explained"),
    [
        ("colour:red", "unknown filter colour:"),
        ('subject:"open', "quoted phrase is not closed"),
        ("after:yesterday", "after: wants a date as YYYY-MM-DD"),
        ("larger:big", "larger: wants a size"),
        ("status:lost", "status: is one of received, stored, parsed, failed"),
        ("has:pdf", "has: knows only has:document"),
        ("from:", "from: needs a value"),
        ("-", "a lone - negates nothing"),
        ("x " * 13, "at most 12 terms"),
        ("x" * 501, "longer than 500"),
    ],
)
def test_search_mistakes_are_explained(query: str, explained: str) -> None:
    with pytest.raises(SearchError, match=explained):
        parse(query)


def test_roles_map_onto_the_api_permissions() -> None:
    assert ROLE_PERMISSIONS["viewer"] == {"messages:read", "raw:read", "events:read"}
    assert ROLE_PERMISSIONS["operator"] == ROLE_PERMISSIONS["viewer"] | {"reprocess"}
    assert ROLE_PERMISSIONS["admin"] == set(PERMISSIONS)


def test_session_cookie_is_secure_httponly_lax_and_the_default_is_secure() -> None:
    response = Response()
    set_session_cookie(response, "abc", secure=True, hours=12)
    cookie = response.headers["set-cookie"].lower()
    for attribute in ("httponly", "secure", "samesite=lax", "path=/inbox", "max-age=43200"):
        assert attribute in cookie
    assert load_settings(None, environ=REQUIRED).inbox_cookie_secure is True


def test_csp_allows_scripts_only_by_nonce_and_forbids_framing() -> None:
    policy = csp("N0nce")
    assert "script-src 'nonce-N0nce'" in policy and "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ORDERFLOW_INBOX_SMTP_URL", "127.0.0.1:25"),
        ("ORDERFLOW_INBOX_SMTP_URL", "smtp://relay"),
        ("ORDERFLOW_INBOX_LINK_TTL", "3600"),
        ("ORDERFLOW_INBOX_COOKIE_SECURE", "maybe"),
    ],
)
def test_inbox_setting_mistakes_stop_at_start_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(None, environ={**REQUIRED, name: value})


def test_verdicts_in_plain_words() -> None:
    lines = dict(
        words.verdict_lines(
            {
                "spf": {"result": "softfail", "smtp.mailfrom": "a@x.example"},
                "dkim": [],
                "dmarc": {"result": "pass", "header.from": "x.example"},
            }
        )
    )
    assert lines["SPF"].startswith("failed softly") and "a@x.example" in lines["SPF"]
    assert lines["DKIM"] == "the message carried no signature"
    assert lines["DMARC"] == "passed for x.example"
    assert words.verdict_lines(None)[0][1].startswith("not checked")
    assert words.size(512) == "512 bytes" and words.size(2048) == "2.0 KiB"
