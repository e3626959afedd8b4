"""Our Authentication-Results header: who claims our authserv-id, building it, parsing it back.

`orderflow_ingest.auth_verdicts.parse_our_verdicts` is what the delivery service stores in
inbound_message.auth_results; these tests hold it to what the milter writes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderflow_ingest import auth_verdicts
from orderflow_ingest.auth_verdicts import authserv_id_of, claims, parse_our_verdicts
from orderflow_ingest.milter.authresults_header import (
    authres_header_value,
    header_value,
    indices_to_remove,
)
from orderflow_ingest.milter.dkim_check import DkimVerdict
from orderflow_ingest.milter.dmarc import DmarcVerdict
from orderflow_ingest.milter.spf_check import SpfVerdict

ID = "mx.orders.test"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" mx.orders.test; spf=pass", "mx.orders.test"),
        ("MX.Orders.TEST;dkim=pass", "mx.orders.test"),
        (" (comment (nested) \\) ) mx.orders.test ; none", "mx.orders.test"),
        ("\r\n\t mx.orders.test\r\n\t; none", "mx.orders.test"),
        (' "mx.orders.test" ; none', "mx.orders.test"),
        (" mx.orders.test 1; none", "mx.orders.test"),
        (" mx.orders.test.; none", "mx.orders.test"),
        (" mx.orders.test(comment); none", "mx.orders.test"),
        (" mx.orders.test; garbage (((", "mx.orders.test"),
        (" mx.orders.test.evil.test; none", "mx.orders.test.evil.test"),
        (" ", None),
        (" (only a comment)", None),
    ],
)
def test_authserv_id_of(value: str, expected: str | None) -> None:
    assert authserv_id_of(value) == expected


def test_claims_is_exact_apart_from_case_and_a_final_dot() -> None:
    assert claims(" MX.ORDERS.TEST; none", ID)
    assert not claims(" orders.test; none", ID)
    assert not claims(" mx.orders.test.evil; none", ID)
    assert not claims(" xmx.orders.test; none", ID)


def test_indices_are_highest_first() -> None:
    assert indices_to_remove([True, False, True, True]) == [4, 3, 1]
    assert indices_to_remove([False]) == []


def verdicts() -> tuple[SpfVerdict, list[DkimVerdict], DmarcVerdict]:
    spf = SpfVerdict("pass", "mailfrom", "sender.test", "a@sender.test", "mail.test", "")
    dkim = [
        DkimVerdict("pass", "sender.test", "s1", "rsa-sha256", "@sender.test", "AbCd+/12", None),
        DkimVerdict("fail", "esp.test", "k", "ed25519-sha256", None, "zz", "body hash mismatch"),
    ]
    dmarc = DmarcVerdict("pass", "sender.test", "reject", "sender.test")
    return spf, dkim, dmarc


def test_built_header_parses_back_into_the_row_json() -> None:
    spf, dkim, dmarc = verdicts()
    value = header_value(ID, spf, dkim, dmarc)
    assert value.startswith(" mx.orders.test;\n\tspf=pass")
    parsed = parse_our_verdicts([value], ID)
    assert parsed == {
        "authserv_id": ID,
        "spf": {"result": "pass", "smtp.mailfrom": "a@sender.test"},
        "dkim": [
            {
                "result": "pass",
                "header.d": "sender.test",
                "header.s": "s1",
                "header.a": "rsa-sha256",
                "header.b": "AbCd+/12",
            },
            {
                "result": "fail",
                "reason": "body hash mismatch",
                "header.d": "esp.test",
                "header.s": "k",
                "header.a": "ed25519-sha256",
                "header.b": "zz",
            },
        ],
        "dmarc": {"result": "pass", "header.from": "sender.test", "policy.dmarc": "reject"},
    }


def test_parser_reads_folded_values_as_the_email_package_gives_them() -> None:
    spf, dkim, dmarc = verdicts()
    folded = header_value(ID, spf, dkim, dmarc).replace("\n", "\r\n")
    assert parse_our_verdicts([folded], ID) == parse_our_verdicts([folded.replace("\r\n", "")], ID)


def test_parser_takes_only_our_header_and_the_topmost() -> None:
    spf, dkim, dmarc = verdicts()
    ours = header_value(ID, spf, dkim, dmarc)
    other = " relay.example; spf=fail smtp.mailfrom=x@y.test"
    later = f" {ID}; spf=fail smtp.mailfrom=x@y.test"
    parsed = parse_our_verdicts([other, ours, later], ID)
    assert parsed is not None and parsed["spf"]["result"] == "pass"


def test_parser_returns_none_without_our_header() -> None:
    assert parse_our_verdicts([" relay.example; spf=pass smtp.mailfrom=a@b.test"], ID) is None
    assert parse_our_verdicts([], ID) is None


def test_parser_marks_an_unparseable_header_of_ours() -> None:
    assert parse_our_verdicts([f" {ID}; spf=pass (((((("], ID) == {
        "authserv_id": ID,
        "spf": None,
        "dkim": [],
        "dmarc": None,
        "unparseable": True,
    }


def test_parser_keeps_other_methods_as_lists() -> None:
    parsed = parse_our_verdicts([f" {ID}; auth=pass smtp.auth=a@b.test; dkim=none"], ID)
    assert parsed is not None
    assert parsed["auth"] == [{"result": "pass", "smtp.auth": "a@b.test"}]
    assert parsed["dkim"] == [{"result": "none"}]


def test_helo_identity_for_the_null_sender() -> None:
    spf = SpfVerdict("none", "helo", "mail.test", None, "mail.test", "")
    value = header_value(ID, spf, [], None)
    assert parse_our_verdicts([value], ID) == {
        "authserv_id": ID,
        "spf": {"result": "none", "smtp.helo": "mail.test"},
        "dkim": [{"result": "none"}],
        "dmarc": None,
    }


@pytest.mark.parametrize(
    ("mailfrom", "shown"),
    [
        ("plain.name+tag@sender.test", "plain.name+tag@sender.test"),
        ('"quoted; dkim=pass"@sender.test', "@sender.test"),
        ("a;dkim=pass@sender.test", "@sender.test"),
        ("a b@sender.test", "@sender.test"),
        ("a@bad;domain", None),
    ],
)
def test_sender_controlled_values_are_sanitised(mailfrom: str, shown: str | None) -> None:
    spf = SpfVerdict("pass", "mailfrom", "sender.test", mailfrom, "mail.test", "")
    value = header_value(ID, spf, [], None)
    parsed = parse_our_verdicts([value], ID)
    assert parsed is not None
    assert parsed["spf"].get("smtp.mailfrom") == shown
    assert parsed["dkim"] == [{"result": "none"}]


def test_hostile_signature_domain_is_left_out() -> None:
    dkim = [DkimVerdict("fail", "x; dkim=pass", "s;1", "rsa-sha256", None, None, None)]
    parsed = parse_our_verdicts([header_value(ID, None, dkim, None)], ID)
    assert parsed is not None
    assert parsed["dkim"] == [{"result": "fail", "header.a": "rsa-sha256"}]


_LABEL = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True)
_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=30)
# Reasons are our own fixed texts (dkim_check._short_reason, dmarc), never sender bytes.
_REASON = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "signature expired",
            "malformed signature",
            "unusable key",
            "body hash mismatch",
            "no aligned SPF or DKIM pass",
            "SPF or DKIM look-up timed out",
        ]
    ),
    st.builds(lambda n: f"l= leaves {n} body bytes unsigned", st.integers(0, 10**6)),
)
_SPF = st.builds(
    SpfVerdict,
    st.sampled_from(["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]),
    st.sampled_from(["mailfrom", "helo"]),
    _LABEL,
    st.one_of(st.none(), st.builds(lambda a, d: f"{a}@{d}", _TEXT, _LABEL)),
    st.one_of(st.none(), _LABEL, _TEXT),
    _TEXT,
)
_DKIM = st.builds(
    DkimVerdict,
    st.sampled_from(["pass", "fail", "neutral", "temperror", "permerror", "policy"]),
    st.one_of(st.none(), _LABEL, _TEXT),
    st.one_of(st.none(), _LABEL, _TEXT),
    st.one_of(st.none(), st.sampled_from(["rsa-sha256", "ed25519-sha256", "rsa-sha1"]), _TEXT),
    st.none(),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9+/]{1,8}", fullmatch=True), _TEXT),
    _REASON,
    st.one_of(st.none(), st.integers(0, 10**9)),
)
_DMARC = st.builds(
    DmarcVerdict,
    st.sampled_from(["pass", "fail", "none", "temperror", "permerror"]),
    st.one_of(st.none(), _LABEL, _TEXT),
    st.one_of(st.none(), st.sampled_from(["none", "quarantine", "reject"])),
    st.none(),
    _REASON,
)


@given(
    spf=st.one_of(st.none(), _SPF),
    dkim=st.lists(_DKIM, max_size=3),
    dmarc=st.one_of(st.none(), _DMARC),
)
@settings(max_examples=400, deadline=None)
def test_plain_reader_agrees_with_authres_on_every_header_the_milter_builds(
    spf: SpfVerdict | None, dkim: list[DkimVerdict], dmarc: DmarcVerdict | None
) -> None:
    """The delivery path reads our header with `_parse_plain`; authres is the reference.
    The one difference allowed: a quoted property value (a header.b with "+" or "/") that
    authres drops, which the plain reader keeps, unquoted."""
    value = header_value(ID, spf, dkim, dmarc)
    text = value.replace("\n", "")
    rest = text.partition(";")[2]
    plain = auth_verdicts._parse_plain(rest)
    assert plain is not None, value
    reference = auth_verdicts._parse_with_authres(text)
    assert [method for method, _ in plain] == [method for method, _ in reference]
    for (_, ours), (_, theirs) in zip(plain, reference, strict=True):
        extra = {key: ours[key] for key in ours.keys() - theirs.keys()}
        assert {key: ours[key] for key in theirs} == theirs, value
        for key, shown in extra.items():
            assert f'{key}="' in value and shown in value, (key, value)


@pytest.mark.parametrize(
    "value",
    [
        f" {ID}; spf=pass (sender ok) smtp.mailfrom=a@sender.test; dkim=none",
        f" {ID} 1; spf=pass smtp.mailfrom=a@sender.test",
        f" (relay) {ID}; dkim=pass header.d=sender.test",
        f" {ID}; dkim/1=pass header.d=sender.test",
        f" {ID}; none",
    ],
)
def test_other_shapes_of_our_header_are_read_by_authres(value: str) -> None:
    """Comments, a version or a method version are not the plain shape: authres reads them,
    so the stored verdicts are what they were before the plain reader existed."""
    text = value.replace("\n", "")
    rest = auth_verdicts._results_text(text, ID)
    assert rest is None or rest.strip() == "none" or auth_verdicts._parse_plain(rest) is None
    expected: dict[str, object] = {"authserv_id": ID, "spf": None, "dkim": [], "dmarc": None}
    try:
        reference = auth_verdicts._parse_with_authres(text)
    except Exception:
        expected["unparseable"] = True
        reference = []
    for method, entry in reference:
        if method in auth_verdicts.SINGLE_METHODS:
            expected[method] = expected[method] or entry
        else:
            expected.setdefault(method, []).append(entry)  # type: ignore[union-attr]
    assert parse_our_verdicts([value], ID) == expected


_ANY_TEXT = st.text(max_size=20)  # also control characters, newlines, non-ASCII


@given(
    spf=st.one_of(
        st.none(),
        _SPF,
        st.builds(
            SpfVerdict,
            _TEXT.filter(bool),
            st.sampled_from(["mailfrom", "helo"]),
            _TEXT,
            _ANY_TEXT,
            _ANY_TEXT,
            _TEXT,
        ),
    ),
    dkim=st.lists(
        st.one_of(
            _DKIM,
            st.builds(
                DkimVerdict,
                _TEXT.filter(bool),
                _ANY_TEXT,
                _ANY_TEXT,
                _ANY_TEXT,
                st.none(),
                _ANY_TEXT,
                st.one_of(st.none(), _ANY_TEXT),
                st.one_of(st.none(), st.integers(0, 10**9)),
            ),
        ),
        max_size=3,
    ),
    dmarc=st.one_of(
        st.none(),
        _DMARC,
        st.builds(DmarcVerdict, _TEXT.filter(bool), _ANY_TEXT, _ANY_TEXT, st.none(), _ANY_TEXT),
    ),
)
@pytest.mark.slow  # hypothesis, a few seconds
@settings(max_examples=500, deadline=None)
def test_header_is_written_byte_for_byte_as_authres_writes_it(
    spf: SpfVerdict | None, dkim: list[DkimVerdict], dmarc: DmarcVerdict | None
) -> None:
    """The milter renders the header itself (cheaper); authres is the reference."""
    assert header_value(ID, spf, dkim, dmarc) == authres_header_value(ID, spf, dkim, dmarc)
