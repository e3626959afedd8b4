"""The streaming walker's MIME structure handling (jobs/walker.py), without any backend."""

from __future__ import annotations

import email
import email.policy
import io

import pytest
from mime_builders import HEAD, PDF, b64, by_part, inspect_bytes, message, sha

from orderflow_ingest.jobs import walker

MIXED = message(
    *HEAD,
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="outer"',
    "",
    "This is the preamble. --outer is not a boundary here.",
    "--outer",
    "Content-Type: text/plain",
    "",
    "Hello,",
    "-- ",
    "a signature line that starts with dashes",
    "--outerX is not our boundary either",
    "--outer",
    "Content-Type: multipart/alternative; boundary=inner",
    "",
    "--inner",
    "Content-Type: text/plain",
    "",
    "plain",
    "--inner",
    "Content-Type: text/html",
    "",
    "<p>html</p>",
    "--inner--",
    "inner epilogue",
    "--outer",
    "Content-Type: application/pdf",
    'Content-Disposition: attachment; filename="po.pdf"',
    "Content-Transfer-Encoding: base64",
    "",
    b64(PDF),
    "--outer--   ",
    "epilogue text",
)


def test_structure_and_paths() -> None:
    parts = by_part(inspect_bytes(MIXED))
    assert parts["1"]["decision"] == "container"
    assert parts["1.1"]["decision"] == "body"
    assert parts["1.2"]["decision"] == "container"
    assert parts["1.2.1"]["decision"] == "body"
    assert parts["1.2.2"]["decision"] == "body"
    assert parts["1.3"]["decision"] == "document"
    assert parts["1.3"]["sha256"] == sha(PDF)
    assert set(parts) == {"1", "1.1", "1.2", "1.2.1", "1.2.2", "1.3"}


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13, 64, 1000])
def test_result_does_not_depend_on_read_size(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    expected = inspect_bytes(MIXED)
    monkeypatch.setattr(walker, "CHUNK", chunk)
    assert inspect_bytes(MIXED) == expected
    crlf = MIXED.replace(b"\n", b"\r\n")
    monkeypatch.setattr(walker, "CHUNK", 256 * 1024)
    expected_crlf = inspect_bytes(crlf)
    monkeypatch.setattr(walker, "CHUNK", chunk)
    assert inspect_bytes(crlf) == expected_crlf


def test_crlf_message_gives_the_same_documents() -> None:
    lf = inspect_bytes(MIXED)["documents"]
    crlf = inspect_bytes(MIXED.replace(b"\n", b"\r\n"))["documents"]
    assert [(d["part"], d["sha256"]) for d in lf] == [(d["part"], d["sha256"]) for d in crlf]


def test_body_bytes_match_the_stdlib() -> None:
    """The line break before a boundary belongs to the boundary, as in the stdlib parser."""
    raw = message(
        *HEAD,
        'Content-Type: multipart/mixed; boundary="b"',
        "",
        "--b",
        'Content-Type: text/csv; name="a.csv"',
        "",
        "x,y",
        "1,2",
        "",
        "--b--",
    )
    document = inspect_bytes(raw)["documents"][0]
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    stdlib = next(iter(parsed.iter_attachments())).get_payload(decode=True)
    assert document["sha256"] == sha(stdlib)
    assert document["size_bytes"] == len(b"x,y\n1,2\n")


def test_missing_inner_close_boundary_is_ended_by_outer() -> None:
    raw = message(
        *HEAD,
        "Content-Type: multipart/mixed; boundary=outer",
        "",
        "--outer",
        "Content-Type: multipart/related; boundary=inner",
        "",
        "--inner",
        "Content-Type: text/html",
        "",
        "<p>x</p>",
        "--outer",
        'Content-Type: application/pdf; name="after.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
        "--outer--",
    )
    result = inspect_bytes(raw)
    assert [d["filename"] for d in result["documents"]] == ["after.pdf"]
    assert result["documents"][0]["part"] == "1.2"
    assert any("closing boundary missing" in d["defect"] for d in result["defects"])


def test_truncated_message_marks_the_open_part_failed() -> None:
    raw = message(
        *HEAD,
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b",
        'Content-Type: application/pdf; name="one.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
        "--b",
        'Content-Type: application/pdf; name="cut.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF)[:40],
    )
    result = inspect_bytes(raw)
    statuses = {d["filename"]: d["status"] for d in result["documents"]}
    assert statuses == {"one.pdf": "STORED", "cut.pdf": "FAILED"}
    assert result["error"] is None


def test_boundary_never_found() -> None:
    raw = message(*HEAD, "Content-Type: multipart/mixed; boundary=nope", "", "just text")
    result = inspect_bytes(raw)
    assert result["documents"] == []
    assert any("never found" in d["defect"] for d in result["defects"])


def test_multipart_without_boundary_is_read_as_text() -> None:
    raw = message(*HEAD, "Content-Type: multipart/mixed", "", "text")
    result = inspect_bytes(raw)
    assert result["documents"] == []
    assert result["skipped"][0]["reason"].startswith("body text")


def test_part_without_headers_and_without_blank_line() -> None:
    raw = message(
        *HEAD,
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b",
        "no headers, body starts at once",
        "--b",
        "",
        "empty headers, default text/plain",
        "--b",
        "--b--",
    )
    result = inspect_bytes(raw)
    assert result["documents"] == []
    parts = by_part(result)
    assert parts["1.1"]["decision"] == "body"
    assert parts["1.2"]["decision"] == "body"
    assert parts["1.3"]["decision"] == "body"  # an empty part


def test_boundary_that_is_a_prefix_of_another() -> None:
    raw = message(
        *HEAD,
        "Content-Type: multipart/mixed; boundary=ab",
        "",
        "--ab",
        "Content-Type: multipart/mixed; boundary=abc",
        "",
        "--abc",
        'Content-Type: text/plain; name="inner.txt"',
        "",
        "inner",
        "--abc--",
        "--ab",
        'Content-Type: text/plain; name="outer.txt"',
        "",
        "outer",
        "--ab--",
    )
    documents = {d["part"]: d["filename"] for d in inspect_bytes(raw)["documents"]}
    assert documents == {"1.1.1": "inner.txt", "1.2": "outer.txt"}


def test_boundary_containing_a_colon_is_not_read_as_a_header() -> None:
    raw = message(
        *HEAD,
        'Content-Type: multipart/mixed; boundary="----=_Part:1"',
        "",
        "------=_Part:1",
        "------=_Part:1",
        'Content-Type: text/plain; name="a.txt"',
        "",
        "a",
        "------=_Part:1--",
    )
    documents = {d["part"]: d["filename"] for d in inspect_bytes(raw)["documents"]}
    assert documents == {"1.2": "a.txt"}


def test_empty_message_is_unparseable() -> None:
    assert inspect_bytes(b"")["error"]["error"] == "unparseable"


def test_header_block_beyond_limit_is_unparseable() -> None:
    raw = b"Subject: x\n" + b"X-Long: " + b"a" * 5000 + b"\n\nbody\n"
    result = inspect_bytes(raw, max_header_bytes=1000)
    assert result["error"]["error"] == "unparseable"


def test_single_part_pdf_message() -> None:
    raw = message(
        *HEAD,
        'Content-Type: application/pdf; name="scan.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
    )
    result = inspect_bytes(raw)
    assert [(d["part"], d["sha256"]) for d in result["documents"]] == [("1", sha(PDF))]


def test_source_errors_are_infrastructure_faults() -> None:
    class Broken(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise ConnectionResetError("peer reset")

    from orderflow_ingest.jobs.extract import extract_message

    with pytest.raises(walker.SourceError):
        extract_message(Broken())  # type: ignore[arg-type]


def test_too_many_parts_stops_walking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walker, "MAX_PARTS", 5)
    lines = [*HEAD, "Content-Type: multipart/mixed; boundary=b", ""]
    for number in range(10):
        lines += ["--b", f'Content-Type: text/plain; name="{number}.txt"', "", "x"]
    lines.append("--b--")
    result = inspect_bytes(message(*lines))
    assert len(result["documents"]) == 4
    assert any("more than 5 parts" in s["reason"] for s in result["skipped"])
