"""Filenames as senders really write them, and names safe for a key (jobs/filenames.py)."""

from __future__ import annotations

import pytest

from orderflow_ingest.jobs.filenames import (
    MAX_NAME_BYTES,
    decode_rfc2047,
    fallback_name,
    parse_header_params,
    sanitise,
)


def filename_of(header: str) -> str | None:
    return parse_header_params(header)[1].get("filename")


def test_plain_quoted_filename() -> None:
    assert filename_of('attachment; filename="order.pdf"') == "order.pdf"


def test_rfc2231_continuations_with_charset_join_bytes_before_decoding() -> None:
    # "Ü" (C3 9C) split across two segments must survive the join.
    header = (
        "attachment; filename*0*=UTF-8'de'Bestellung%20%C3; filename*1*=%9Cbersicht;"
        ' filename*2=".pdf"'
    )
    assert filename_of(header) == "Bestellung Übersicht.pdf"


def test_rfc2231_latin1_charset() -> None:
    assert filename_of("attachment; filename*=iso-8859-1''Pr%E4sentation.xls") == "Präsentation.xls"


def test_rfc2231_out_of_order_segments_are_sorted_and_reported() -> None:
    _token, params, defects = parse_header_params('attachment; filename*1="b.pdf"; filename*0="a"')
    assert params["filename"] == "ab.pdf"
    assert not defects
    _, params, defects = parse_header_params('attachment; filename*0="a"; filename*2="c"')
    assert params["filename"] == "ac"
    assert defects


def test_extended_form_wins_over_plain() -> None:
    header = "attachment; filename=\"fallback.pdf\"; filename*=UTF-8''real%C3%A9.pdf"
    assert filename_of(header) == "realé.pdf"


def test_rfc2047_inside_quoted_parameter_is_decoded() -> None:
    # Forbidden by RFC 2047 §5, sent by most webmail anyway.
    assert (
        parse_header_params('application/pdf; name="=?UTF-8?B?w5xiZXJzaWNodC5wZGY=?="')[1]["name"]
        == "Übersicht.pdf"
    )


def test_rfc2047_q_encoding_split_over_words_joined() -> None:
    assert decode_rfc2047("=?utf-8?q?Bestellung_=C3?= =?utf-8?q?=9C.pdf?=") == "Bestellung Ü.pdf"


def test_rfc2047_unknown_charset_and_bad_base64_do_not_raise() -> None:
    assert decode_rfc2047("=?x-made-up?B?b3JkZXI=?=.pdf") == "order.pdf"
    assert "order" not in decode_rfc2047("=?utf-8?B?!!!?=order"[:12])  # no exception


def test_unquoted_name_with_spaces_is_recovered_whole() -> None:
    assert filename_of("attachment; filename=Order 42 final.pdf; size=1200") == "Order 42 final.pdf"


def test_raw_utf8_and_cp1252_bytes_in_header() -> None:
    utf8 = 'attachment; filename="Größe.pdf"'.encode().decode("utf-8")
    assert filename_of(utf8) == "Größe.pdf"
    cp1252 = b'attachment; filename="Gr\xf6\xdfe.pdf"'.decode("utf-8", "surrogateescape")
    assert filename_of(cp1252) == "Größe.pdf"


def test_undecodable_bytes_are_replaced_not_fatal() -> None:
    header = "attachment; filename*=utf-8''bad%FF%FE.pdf"
    name = filename_of(header)
    assert name is not None and name.endswith(".pdf")


def test_backslash_escapes_in_quoted_string() -> None:
    assert filename_of(r'attachment; filename="a\"b.pdf"') == 'a"b.pdf'


def test_unterminated_quote_runs_to_end() -> None:
    assert filename_of('attachment; filename="order.pdf') == "order.pdf"


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("order.pdf", "order.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\buyer\\Desktop\\PO 4711.pdf", "PO 4711.pdf"),
        ("..", None),
        ("", None),
        ("/", None),
        ("a\x00b\x1f.pdf", "ab.pdf"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # right-to-left override removed
        ("what?*:<>|.pdf", "what______.pdf"),
        ("  spaced   name .pdf  ", "spaced name .pdf"),
        ("Bestellung Ü.pdf", "Bestellung Ü.pdf"),
    ],
)
def test_sanitise(raw: str, safe: str | None) -> None:
    assert sanitise(raw) == safe


def test_sanitise_caps_length_and_keeps_extension() -> None:
    name = sanitise("ä" * 400 + ".xlsx")
    assert name is not None
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith(".xlsx")


def test_sanitised_names_never_contain_separators_or_dotdot() -> None:
    for raw in ("a/../b", "..\\..\\x", "x/..", "./.", "a/b/c/..pdf"):
        name = sanitise(raw)
        assert name is None or ("/" not in name and "\\" not in name and name not in (".", ".."))


def test_fallback_name_from_part_path_and_type() -> None:
    assert fallback_name("1.2", "application/pdf") == "part-1.2.pdf"
    assert fallback_name("1.3.1", "application/x-unknown") == "part-1.3.1.bin"


# --- issue 10 item 4: names that used to fail every document of their message ----------------

HOSTILE_DISPOSITIONS = {
    "nul_rfc2231": "attachment; filename*=utf-8''Auftrag%00Nr.pdf",
    "surrogate_rfc2047": 'attachment; filename="=?utf-7?q?+2AA-Auftrag.pdf?="',
    "rot13_charset": "attachment; filename*=rot13''Nhsgent.pdf",
    "hex_charset": "attachment; filename*=hex''Auftrag.pdf",
    "unicode_escape_rfc2231": "attachment; filename*=unicode_escape''%5Cud800Auftrag.pdf",
    "unicode_escape_rfc2047": 'attachment; filename="=?unicode_escape?q?=5Cx00Auftrag.pdf?="',
    "continuation_digits": "attachment; filename*" + "7" * 5000 + "=Auftrag.pdf",
    "non_ascii_in_q_word": 'attachment; filename="=?utf-8?q?Gr\u00f6\u00dfe.pdf?="',
}


def _storable(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text)


@pytest.mark.parametrize("header", HOSTILE_DISPOSITIONS.values(), ids=HOSTILE_DISPOSITIONS.keys())
def test_item4_hostile_names_parse_without_raising(header: str) -> None:
    _token, params, _defects = parse_header_params(header)
    name = params.get("filename")
    safe = sanitise(name)
    assert safe is None or (_storable(safe) and "/" not in safe)


def test_item4_bad_filename_does_not_fail_other_documents() -> None:
    """Every hostile name in one message, then a good PDF: all six become documents, no name
    holds NUL or a lone surrogate, and nothing is recorded as a walker failure."""
    from mime_builders import HEAD, PDF, b64, inspect_bytes, message

    lines = [*HEAD, "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', ""]
    for disposition in [*HOSTILE_DISPOSITIONS.values(), 'attachment; filename="good.pdf"']:
        lines += [
            "--b",
            "Content-Type: application/pdf",
            f"Content-Disposition: {disposition}",
            "Content-Transfer-Encoding: base64",
            "",
            b64(PDF),
        ]
    lines.append("--b--")
    result = inspect_bytes(message(*lines))
    assert result["error"] is None
    found = result["documents"]
    assert len(found) == len(HOSTILE_DISPOSITIONS) + 1
    assert found[-1]["filename"] == "good.pdf"
    for document in found:
        assert _storable(document["filename"]), document
        assert _storable(document["original_filename"] or ""), document
    names = {d["part"]: d["filename"] for d in found}
    assert names["1.3"] == "Nhsgent.pdf"  # rot13 is no charset: the bytes are read as UTF-8
    assert names["1.7"] == "part-1.7.pdf"  # an index of 5,000 digits names no segment
    assert names["1.8"] == "Größe.pdf"


def test_item4_non_text_and_escape_codecs_are_not_charsets() -> None:
    from orderflow_ingest.jobs.filenames import decode_bytes, lookup_charset

    for label in ("rot13", "hex", "base64", "zlib", "unicode_escape", "raw_unicode_escape"):
        assert lookup_charset(label) is None, label
    assert lookup_charset("utf-8") == "utf-8"
    assert lookup_charset("ISO-8859-1") == "iso8859-1"
    assert decode_bytes(b"Gr\xc3\xb6\xc3\x9fe", "rot13") == ("Größe", True)


def test_sanitise_is_idempotent_when_removed_characters_reorder_combining_marks() -> None:
    """Found by `make fuzz`: a control character between two combining marks is removed after
    NFC, leaving them out of canonical order, so a second sanitise changed the name."""
    from orderflow_ingest.jobs.filenames import sanitise

    name = sanitise("order_\u0345\x01\u0368.pdf")
    assert name is not None
    assert sanitise(name) == name
