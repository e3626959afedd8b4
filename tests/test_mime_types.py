"""mime_type normalisation and refinement by extension and magic bytes (jobs/file_types.py)."""

from __future__ import annotations

import pytest
from mime_builders import CSV_BYTES, PDF, PNG, XLS, XLSX, ZIP

from orderflow_ingest.jobs import file_types as mt


@pytest.mark.parametrize(
    ("declared", "normal"),
    [
        ("Application/PDF; name=x.pdf", "application/pdf"),
        ("application/x-pdf", "application/pdf"),
        ("application/x-zip-compressed", "application/zip"),
        ("text/comma-separated-values", "text/csv"),
        ("image/jpg", "image/jpeg"),
        ("garbage", ""),
        ("", ""),
        (None, ""),
        ('"text/plain"', "text/plain"),
    ],
)
def test_normalise(declared: str | None, normal: str) -> None:
    assert mt.normalise(declared) == normal


@pytest.mark.parametrize(
    ("declared", "filename", "head", "refined"),
    [
        ("application/octet-stream", None, PDF, mt.PDF),
        ("application/octet-stream", "x.bin", XLSX, mt.XLSX),
        ("application/octet-stream", None, ZIP, mt.ZIP),
        ("application/octet-stream", "orders.xls", XLS, mt.XLS),
        ("application/octet-stream", None, XLS, mt.OCTET_STREAM),  # OLE2, but which?
        ("application/octet-stream", None, CSV_BYTES, mt.CSV),
        ("application/octet-stream", "notes.txt", CSV_BYTES, "text/plain"),
        ("application/octet-stream", "x.csv", b"", mt.CSV),
        ("", "scan.pdf", b"garbage", mt.PDF),
        ("application/force-download", None, PDF, mt.PDF),
        ("application/zip", "report.xlsx", XLSX, mt.XLSX),
        ("application/zip", "archive.zip", ZIP, mt.ZIP),  # stored as-is, type kept
        ("application/vnd.ms-excel", "export.csv", CSV_BYTES, mt.CSV),  # what Windows sends
        ("application/vnd.ms-excel", "real.xls", XLS, mt.XLS),
        ("text/plain", "orders.csv", CSV_BYTES, mt.CSV),
        ("image/png", "x.png", PNG, "image/png"),
        ("application/pdf", "x.pdf", b"not really", mt.PDF),
    ],
)
def test_refine(declared: str, filename: str | None, head: bytes, refined: str) -> None:
    assert mt.refine(declared, filename, head) == refined


def test_csv_sniffing_needs_consistent_delimiters() -> None:
    assert mt.looks_like_csv(b"a,b,c\n1,2,3\n4,5,6\n")
    assert mt.looks_like_csv(b"a\tb\n1\t2\n")
    assert not mt.looks_like_csv(b"Dear buyer, please find\nthe order attached.\nThanks\n")
    assert not mt.looks_like_csv(b"one line, only\n")
    assert not mt.looks_like_csv(b"a,b\x00c\n1,2\n")


def test_declared_type_uses_extension_for_generic_types() -> None:
    assert (
        mt.declared_type("application/octet-stream", "smime.p7s") == "application/pkcs7-signature"
    )
    assert mt.declared_type("application/pdf", "x.csv") == "application/pdf"
