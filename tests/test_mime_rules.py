"""Every document rule of issue 4, by name, on hand-built messages (no backends).

Each test builds the message the way the named mailer or situation does and checks both the
decision and the recorded reason.
"""

from __future__ import annotations

import binascii

from mime_builders import (
    CSV_BYTES,
    HEAD,
    JPEG,
    PDF,
    PNG,
    XLS,
    XLSX,
    ZIP,
    b64,
    by_part,
    inspect_bytes,
    message,
    sha,
    tnef_blob,
)


def mixed(*parts: list[str], boundary: str = "b", ctype: str = "multipart/mixed") -> bytes:
    lines = [*HEAD, "MIME-Version: 1.0", f'Content-Type: {ctype}; boundary="{boundary}"', ""]
    for part in parts:
        lines += [f"--{boundary}", *part]
    lines.append(f"--{boundary}--")
    return message(*lines)


def text_part(body: str = "Please find our order attached.") -> list[str]:
    return ["Content-Type: text/plain; charset=utf-8", "", body]


def pdf_part(disposition: str = 'attachment; filename="po.pdf"', data: bytes = PDF) -> list[str]:
    return [
        "Content-Type: application/pdf",
        f"Content-Disposition: {disposition}",
        "Content-Transfer-Encoding: base64",
        "",
        b64(data),
    ]


def documents(raw: bytes) -> list[dict]:
    return inspect_bytes(raw)["documents"]


# --- containers and bodies -----------------------------------------------------------------


def test_multipart_containers_are_walked_not_documents() -> None:
    parts = by_part(inspect_bytes(mixed(text_part(), pdf_part())))
    assert parts["1"]["decision"] == "container"
    assert "walked into" in parts["1"]["reason"]


def test_body_text_is_not_a_document() -> None:
    raw = mixed(text_part(), ["Content-Type: text/html", "", "<p>hi</p>"])
    result = inspect_bytes(raw)
    assert result["documents"] == []
    assert {s["reason"] for s in result["skipped"] if s["part"] != "1"} == {
        "body text (text/plain)",
        "body text (text/html)",
    }


def test_no_attachments_gives_no_documents() -> None:
    raw = message(*HEAD, "Content-Type: text/plain", "", "Order: 10x A-1, 5x B-7")
    result = inspect_bytes(raw)
    assert result["documents"] == []
    assert result["skipped"][0]["decision"] == "body"
    assert result["error"] is None


def test_forwarded_message_rfc822_is_walked_at_depth() -> None:
    inner = mixed(
        text_part("forwarded"), pdf_part('attachment; filename="inner.pdf"'), boundary="i"
    )
    raw = mixed(
        text_part("FYI"),
        [
            "Content-Type: message/rfc822",
            'Content-Disposition: attachment; filename="fwd.eml"',
            "",
            *inner.decode().splitlines(),
        ],
    )
    result = inspect_bytes(raw)
    parts = by_part(result)
    assert parts["1.2"]["decision"] == "container"  # the attached message itself
    assert parts["1.2.1"]["decision"] == "container"  # its multipart body
    assert [(d["part"], d["filename"]) for d in result["documents"]] == [("1.2.1.2", "inner.pdf")]


def test_message_rfc822_nesting_stops_at_the_depth_limit() -> None:
    raw = mixed(text_part(), pdf_part('attachment; filename="deep.pdf"'), boundary="b0")
    for level in range(1, 6):
        raw = mixed(
            ["Content-Type: message/rfc822", "", *raw.decode().splitlines()], boundary=f"b{level}"
        )
    assert [d["filename"] for d in documents(raw)] == ["deep.pdf"]
    limited = inspect_bytes(raw, max_depth=4)
    assert limited["documents"] == []
    assert any("nested deeper than 4" in s["reason"] for s in limited["skipped"])


def test_base64_encoded_message_rfc822_is_decoded_and_walked() -> None:
    inner = mixed(pdf_part('attachment; filename="wrapped.pdf"'), boundary="i")
    raw = mixed(
        text_part(),
        ["Content-Type: message/rfc822", "Content-Transfer-Encoding: base64", "", b64(inner)],
    )
    result = inspect_bytes(raw)
    assert [(d["part"], d["filename"], d["sha256"]) for d in result["documents"]] == [
        ("1.2.1.1", "wrapped.pdf", sha(PDF))
    ]


# --- signatures and reports ------------------------------------------------------------------


def test_smime_signature_is_not_a_document_but_the_signed_pdf_is() -> None:
    signed = [
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary=s',
        "",
        "--s",
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        *text_part(),
        "--m",
        *pdf_part(),
        "--m--",
        "--s",
        'Content-Type: application/pkcs7-signature; name="smime.p7s"',
        'Content-Disposition: attachment; filename="smime.p7s"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(b"\x30\x82signature"),
        "--s--",
    ]
    raw = message(*HEAD, *signed)
    result = inspect_bytes(raw)
    assert [d["filename"] for d in result["documents"]] == ["po.pdf"]
    signature = by_part(result)["1.2"]
    assert signature["decision"] == "signature"
    assert "application/pkcs7-signature" in signature["reason"]


def test_legacy_x_pkcs7_and_pgp_signatures_are_not_documents() -> None:
    raw = mixed(
        pdf_part(),
        ['Content-Type: application/x-pkcs7-signature; name="smime.p7s"', "", "sig"],
        ['Content-Type: application/pgp-signature; name="signature.asc"', "", "-----BEGIN PGP"],
        ['Content-Type: application/octet-stream; name="smime.p7s"', "", "sig"],
    )
    parts = by_part(inspect_bytes(raw))
    assert [parts[p]["decision"] for p in ("1.2", "1.3", "1.4")] == ["signature"] * 3
    assert parts["1.1"]["decision"] == "document"


def test_delivery_status_report_is_not_a_document() -> None:
    raw = mixed(
        text_part("Delivery failed"),
        [
            "Content-Type: message/delivery-status",
            "",
            "Reporting-MTA: dns; mx.example",
            "",
            "Final-Recipient: rfc822; x@y",
            "Action: failed",
            "Status: 5.1.1",
        ],
        ["Content-Type: text/rfc822-headers", "", "Subject: original"],
        ctype='multipart/report; report-type="delivery-status"',
    )
    result = inspect_bytes(raw)
    assert result["documents"] == []
    parts = by_part(result)
    assert parts["1.2"]["decision"] == "report"
    assert "delivery status report" in parts["1.2"]["reason"]
    assert parts["1.3"]["decision"] == "report"


# --- images ------------------------------------------------------------------------------------


def test_multipart_related_images_are_inline_body_images() -> None:
    related = [
        'Content-Type: multipart/related; boundary="r"',
        "",
        "--r",
        "Content-Type: text/html",
        "",
        '<p>logo below <img src="cid:logo@x"></p>',
        "--r",
        'Content-Type: image/png; name="logo.png"',
        "Content-ID: <logo@x>",
        "Content-Transfer-Encoding: base64",
        "",
        b64(PNG),
        "--r--",
    ]
    result = inspect_bytes(mixed(related, pdf_part()))
    image = by_part(result)["1.1.2"]
    assert image["decision"] == "inline-image"
    assert image["reason"] == (
        "inline body image: the HTML body references cid:logo@x (multipart/related)"
    )
    assert [d["filename"] for d in result["documents"]] == ["po.pdf"]


def test_item5_unreferenced_image_in_multipart_related_is_document() -> None:
    """multipart/related proves nothing: only a reference from an HTML body does."""
    related = [
        'Content-Type: multipart/related; boundary="r"',
        "",
        "--r",
        "Content-Type: text/html",
        "",
        "<p>the order is in the photo</p>",
        "--r",
        'Content-Type: image/jpeg; name="IMG_0001.jpeg"',
        "Content-ID: <IMG_0001@apple>",
        "Content-Transfer-Encoding: base64",
        "",
        b64(JPEG),
        "--r--",
    ]
    (document,) = documents(mixed(related))
    assert (document["part"], document["filename"]) == ("1.1.2", "IMG_0001.jpeg")
    assert document["sha256"] == sha(JPEG)


def test_cid_referenced_image_outside_related_is_inline() -> None:
    raw = mixed(
        [
            "Content-Type: text/html",
            "Content-Transfer-Encoding: quoted-printable",
            "",
            '<img src=3D"cid:sig.png@01D9">',
        ],
        [
            'Content-Type: image/png; name="sig.png"',
            "Content-Disposition: inline",
            "Content-ID: <sig.png@01D9>",
            "Content-Transfer-Encoding: base64",
            "",
            b64(PNG),
        ],
    )
    image = by_part(inspect_bytes(raw))["1.2"]
    assert image["decision"] == "inline-image"
    assert "cid:sig.png@01D9" in image["reason"]


def test_reference_after_the_image_is_still_seen() -> None:
    """The HTML body may come after the image: images are decided after the walk."""
    raw = mixed(
        [
            'Content-Type: image/jpeg; name="banner.jpg"',
            "Content-ID: <banner>",
            "Content-Transfer-Encoding: base64",
            "",
            b64(JPEG),
        ],
        ["Content-Type: text/html", "", "<body background='cid:banner'></body>"],
    )
    assert documents(raw) == []


def test_content_location_referenced_image_is_inline() -> None:
    raw = mixed(
        ["Content-Type: text/html", "", '<img src="http://example.com/logo.png">'],
        [
            'Content-Type: image/png; name="logo.png"',
            "Content-Location: http://example.com/logo.png",
            "Content-Transfer-Encoding: base64",
            "",
            b64(PNG),
        ],
    )
    image = by_part(inspect_bytes(raw))["1.2"]
    assert image["decision"] == "inline-image"
    assert "references http://example.com/logo.png" in image["reason"]


def test_unreferenced_inline_photo_is_a_document() -> None:
    """A phone's photo of a paper order: inline, named, referenced by nothing."""
    raw = mixed(
        text_part("see photo"),
        [
            'Content-Type: image/jpeg; name="IMG_4711.JPG"',
            'Content-Disposition: inline; filename="IMG_4711.JPG"',
            "Content-ID: <photo-1>",
            "Content-Transfer-Encoding: base64",
            "",
            b64(JPEG),
        ],
    )
    (document,) = documents(raw)
    assert document["filename"] == "IMG_4711.JPG"
    assert document["mime_type"] == "image/jpeg"
    assert "nothing references" in document["reason"]


def test_item5_unreferenced_image_without_name_is_document() -> None:
    raw = mixed(
        text_part(),
        ["Content-Type: image/gif", "Content-Transfer-Encoding: base64", "", b64(b"GIF89a")],
    )
    (document,) = documents(raw)
    assert (document["part"], document["filename"]) == ("1.2", "part-1.2.gif")
    assert "nothing references" in document["reason"]


def test_item5_unreferenced_inline_image_with_content_id_is_document() -> None:
    """Apple Mail, plain-text body: the photographed order is inline, has a Content-ID and a
    Content-Location, and no name. Nothing references it, so it is the order."""
    raw = mixed(
        text_part("Bestellung anbei"),
        [
            "Content-Type: image/jpeg",
            "Content-Disposition: inline",
            "Content-ID: <3F1C-4711@apple.example>",
            "Content-Location: IMG_4711.jpeg",
            "Content-Transfer-Encoding: base64",
            "",
            b64(JPEG),
        ],
    )
    (document,) = documents(raw)
    assert document["part"] == "1.2"
    assert document["mime_type"] == "image/jpeg"
    assert document["sha256"] == sha(JPEG)


def test_item5_image_referenced_by_a_later_html_part_is_inline() -> None:
    """The HTML that references the image comes after it: decided at the end of the walk."""
    raw = mixed(
        [
            "Content-Type: image/png",
            "Content-ID: <later@x>",
            "Content-Transfer-Encoding: base64",
            "",
            b64(PNG),
        ],
        ["Content-Type: text/html", "", '<img src="cid:later@x">'],
    )
    parts = by_part(inspect_bytes(raw))
    assert parts["1.1"]["decision"] == "inline-image"
    assert "cid:later@x" in parts["1.1"]["reason"]


def test_item5_unknown_multipart_subtype_walked_as_mixed() -> None:
    """RFC 2046 §5.1.7: an unrecognised or malformed multipart subtype is multipart/mixed."""
    for ctype in ("multipart/*", "multipart", "multipart/x-foo", "Multipart/[weird]"):
        raw = mixed(text_part(), pdf_part(), ctype=ctype)
        result = inspect_bytes(raw)
        assert [(d["part"], d["filename"]) for d in result["documents"]] == [("1.2", "po.pdf")], (
            ctype
        )
        assert by_part(result)["1.1"]["decision"] == "body", ctype


# --- documents and their names ----------------------------------------------------------------


def test_apple_mail_inline_pdf_is_a_document() -> None:
    raw = mixed(
        text_part(),
        [
            'Content-Type: application/pdf; x-unix-mode=0644; name="Bestellung.pdf"',
            'Content-Disposition: inline; filename="Bestellung.pdf"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(PDF),
        ],
        ctype="multipart/alternative" if False else "multipart/mixed",
    )
    (document,) = documents(raw)
    assert document["filename"] == "Bestellung.pdf"
    assert document["reason"] == "inline part with a filename"


def test_rfc2231_continuations_and_charset() -> None:
    raw = mixed(
        pdf_part("attachment; filename*0*=UTF-8''Auftrag%20Nr%20; filename*1*=4711%20%C3%A4.pdf")
    )
    assert documents(raw)[0]["filename"] == "Auftrag Nr 4711 ä.pdf"


def test_rfc2047_name_in_content_type_only() -> None:
    raw = mixed(
        [
            'Content-Type: application/pdf; name="=?ISO-8859-1?Q?Best=E4tigung.pdf?="',
            "Content-Transfer-Encoding: base64",
            "",
            b64(PDF),
        ]
    )
    (document,) = documents(raw)
    assert document["filename"] == "Bestätigung.pdf"


def test_unicode_filename_raw_utf8() -> None:
    raw = mixed(pdf_part('attachment; filename="注文書 №7.pdf"'))
    assert documents(raw)[0]["filename"] == "注文書 №7.pdf"


def test_unquoted_filename_with_spaces() -> None:
    raw = mixed(pdf_part("attachment; filename=Purchase Order 4711.pdf"))
    assert documents(raw)[0]["filename"] == "Purchase Order 4711.pdf"


def test_attachment_without_name_is_named_from_part_path_and_type() -> None:
    raw = mixed(text_part(), pdf_part("attachment"))
    (document,) = documents(raw)
    assert document["filename"] == "part-1.2.pdf"
    assert document["original_filename"] is None


def test_nameless_pdf_without_disposition_is_still_a_file() -> None:
    raw = mixed(
        text_part(),
        ["Content-Type: application/pdf", "Content-Transfer-Encoding: base64", "", b64(PDF)],
    )
    (document,) = documents(raw)
    assert document["filename"] == "part-1.2.pdf"


def test_hostile_filename_is_sanitised() -> None:
    raw = mixed(pdf_part('attachment; filename="../../etc/cron.d/x\x01.pdf"'))
    (document,) = documents(raw)
    assert document["filename"] == "x.pdf"
    assert document["original_filename"] == "../../etc/cron.d/x\x01.pdf"


def test_zip_is_stored_as_is() -> None:
    raw = mixed(
        [
            'Content-Type: application/x-zip-compressed; name="orders.zip"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(ZIP),
        ]
    )
    (document,) = documents(raw)
    assert document["mime_type"] == "application/zip"
    assert document["sha256"] == sha(ZIP)


def test_xlsx_xls_and_csv_attachments() -> None:
    raw = mixed(
        [
            "Content-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet;",
            ' name="a.xlsx"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(XLSX),
        ],
        [
            'Content-Type: application/vnd.ms-excel; name="b.xls"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(XLS),
        ],
        ['Content-Type: text/csv; name="c.csv"', "", CSV_BYTES.decode()],
    )
    types = {d["filename"]: d["mime_type"] for d in documents(raw)}
    assert types == {
        "a.xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "b.xls": "application/vnd.ms-excel",
        "c.csv": "text/csv",
    }


def test_octet_stream_refined_by_magic_bytes() -> None:
    raw = mixed(
        [
            "Content-Type: application/octet-stream",
            "Content-Disposition: attachment",
            "Content-Transfer-Encoding: base64",
            "",
            b64(PDF),
        ],
        [
            'Content-Type: application/octet-stream; name="data"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(XLSX),
        ],
        ['Content-Type: application/octet-stream; name="export"', "", CSV_BYTES.decode()],
        [
            'Content-Type: application/octet-stream; name="legacy.xls"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(XLS),
        ],
    )
    types = [d["mime_type"] for d in documents(raw)]
    assert types == [
        "application/pdf",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "text/csv",
        "application/vnd.ms-excel",
    ]
    assert documents(raw)[0]["filename"] == "part-1.1.pdf"


# --- winmail.dat ------------------------------------------------------------------------------


def test_outlook_winmail_dat_files_become_documents() -> None:
    blob = tnef_blob([("Bestellung März.pdf", PDF), ("Preisliste.xlsx", XLSX)])
    raw = mixed(
        text_part(),
        [
            'Content-Type: application/ms-tnef; name="winmail.dat"',
            'Content-Disposition: attachment; filename="winmail.dat"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(blob),
        ],
    )
    result = inspect_bytes(raw)
    assert [
        (d["part"], d["filename"], d["sha256"], d["mime_type"]) for d in result["documents"]
    ] == [
        ("1.2.1", "Bestellung März.pdf", sha(PDF), "application/pdf"),
        (
            "1.2.2",
            "Preisliste.xlsx",
            sha(XLSX),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
    ]
    winmail = by_part(result)["1.2"]
    assert winmail["decision"] == "tnef"
    assert "2 file(s)" in winmail["reason"]


def test_winmail_dat_as_octet_stream_is_recognised_by_name() -> None:
    blob = tnef_blob([("ORDER.PDF", PDF)], long_names=False)
    raw = mixed(
        [
            'Content-Type: application/octet-stream; name="winmail.dat"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(blob),
        ]
    )
    assert [d["filename"] for d in documents(raw)] == ["ORDER.PDF"]


def test_unreadable_winmail_dat_is_stored_itself() -> None:
    raw = mixed(
        [
            'Content-Type: application/ms-tnef; name="winmail.dat"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(b"not tnef at all"),
        ]
    )
    (document,) = documents(raw)
    assert document["filename"] == "winmail.dat"
    assert "could not be unpacked" in document["reason"]
    assert document["status"] == "STORED"


# --- transfer encodings -----------------------------------------------------------------------


def test_base64_with_bad_padding_and_stray_characters() -> None:
    body = b64(PDF).replace("=", "") + "\n"
    body = body[:30] + "*" + body[30:]
    raw = mixed(
        [
            'Content-Type: application/pdf; name="pad.pdf"',
            "Content-Transfer-Encoding: BASE64",
            "",
            body,
        ]
    )
    (document,) = documents(raw)
    assert document["sha256"] == sha(PDF)
    assert document["status"] == "STORED"
    assert any("outside the alphabet" in d for d in document["defects"])


def test_quoted_printable_7bit_8bit_binary() -> None:
    raw = mixed(
        [
            'Content-Type: text/csv; name="qp.csv"',
            "Content-Transfer-Encoding: quoted-printable",
            "",
            "sku;name=3Bqty",
            "A-1;M=C3=BChle;2",
        ],
        [
            'Content-Type: text/csv; name="7.csv"',
            "Content-Transfer-Encoding: 7bit",
            "",
            "a;b",
            "1;2",
        ],
        [
            'Content-Type: text/csv; name="8.csv"',
            "Content-Transfer-Encoding: 8bit",
            "",
            "ä;ö",
            "1;2",
        ],
        [
            'Content-Type: text/csv; name="bin.csv"',
            "Content-Transfer-Encoding: binary",
            "",
            "x;y",
            "1;2",
        ],
    )
    found = {d["filename"]: d["sha256"] for d in documents(raw)}
    assert found == {
        "qp.csv": sha("sku;name;qty\nA-1;Mühle;2".encode()),
        "7.csv": sha(b"a;b\n1;2"),
        "8.csv": sha("ä;ö\n1;2".encode()),
        "bin.csv": sha(b"x;y\n1;2"),
    }


def test_x_uuencode_part_takes_its_name_from_the_begin_line() -> None:
    lines = ["begin 644 order 4711.pdf"]
    lines += [
        binascii.b2a_uu(PDF[i : i + 45]).decode().rstrip("\n") for i in range(0, len(PDF), 45)
    ]
    lines += ["`", "end"]
    raw = mixed(
        text_part(),
        [
            "Content-Type: application/octet-stream",
            "Content-Transfer-Encoding: x-uuencode",
            "",
            *lines,
        ],
    )
    (document,) = documents(raw)
    assert document["filename"] == "order 4711.pdf"
    assert document["sha256"] == sha(PDF)
    assert document["mime_type"] == "application/pdf"


def test_unknown_transfer_encoding_is_stored_as_is_and_recorded() -> None:
    raw = mixed(
        [
            'Content-Type: application/pdf; name="odd.pdf"',
            "Content-Transfer-Encoding: x-binhex",
            "",
            "%PDF-raw",
        ]
    )
    (document,) = documents(raw)
    assert document["sha256"] == sha(b"%PDF-raw")
    assert any("unknown transfer encoding 'x-binhex'" in d for d in document["defects"])


def test_corrupt_part_is_recorded_and_others_survive() -> None:
    raw = mixed(
        [
            'Content-Type: application/pdf; name="broken.pdf"',
            "Content-Transfer-Encoding: base64",
            "",
            "%%%% this is not base64 !!! ~~~~ " * 30,
        ],
        pdf_part('attachment; filename="good.pdf"'),
    )
    result = inspect_bytes(raw)
    statuses = {d["filename"]: d["status"] for d in result["documents"]}
    assert statuses == {"broken.pdf": "FAILED", "good.pdf": "STORED"}
    broken = result["documents"][0]
    assert "corrupt" in broken["reason"]
    assert result["error"] is None


def winmail_message(blob: bytes) -> bytes:
    return mixed(
        text_part(),
        [
            'Content-Type: application/ms-tnef; name="winmail.dat"',
            "Content-Transfer-Encoding: base64",
            "",
            b64(blob),
        ],
    )


def test_large_winmail_dat_is_streamed_with_the_same_result(monkeypatch) -> None:
    from orderflow_ingest.jobs import tnef

    blob = tnef_blob(
        [("Bestellung März.pdf", PDF), ("Preisliste.xlsx", XLSX), ("x.csv", CSV_BYTES)]
    )
    in_memory = documents(winmail_message(blob))
    monkeypatch.setattr(tnef, "STREAM_THRESHOLD", 0)
    streamed = documents(winmail_message(blob))
    assert streamed == in_memory
    assert [d["filename"] for d in streamed] == ["Bestellung März.pdf", "Preisliste.xlsx", "x.csv"]
    short_names = documents(winmail_message(tnef_blob([("ORDER.PDF", PDF)], long_names=False)))
    assert [d["filename"] for d in short_names] == ["ORDER.PDF"]


def test_large_winmail_dat_cut_short_is_stored_itself(monkeypatch) -> None:
    from orderflow_ingest.jobs import tnef

    monkeypatch.setattr(tnef, "STREAM_THRESHOLD", 0)
    blob = tnef_blob([("a.pdf", PDF)])[:-20]
    (document,) = documents(winmail_message(blob))
    assert document["filename"] == "winmail.dat"
    assert "could not be unpacked" in document["reason"]
    assert document["sha256"] == sha(blob)
