"""MIME types: normalise what senders declare, and refine the generic ones from the content.

Downstream extraction picks a parser by mime_type, so `application/octet-stream` on a PDF, or
Windows' `application/vnd.ms-excel` on a CSV, is an order that goes to the wrong parser. The
refinement looks at the extension and the first bytes of the decoded content only.
"""

from __future__ import annotations

import re

OCTET_STREAM = "application/octet-stream"
PDF = "application/pdf"
ZIP = "application/zip"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLS = "application/vnd.ms-excel"
DOC = "application/msword"
OLE = "application/x-ole-storage"
CSV = "text/csv"
TEXT = "text/plain"

# How many decoded bytes of each part the refinement may look at.
HEAD_BYTES = 8192

_TOKEN = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")

_ALIASES = {
    "application/x-pdf": PDF,
    "application/acrobat": PDF,
    "application/vnd.pdf": PDF,
    "text/pdf": PDF,
    "text/x-pdf": PDF,
    "application/x-zip-compressed": ZIP,
    "application/x-zip": ZIP,
    "multipart/x-zip": ZIP,
    "application/zip-compressed": ZIP,
    "application/excel": XLS,
    "application/x-excel": XLS,
    "application/x-msexcel": XLS,
    "application/msexcel": XLS,
    "application/xls": XLS,
    "application/x-xls": XLS,
    "text/comma-separated-values": CSV,
    "text/x-csv": CSV,
    "text/x-comma-separated-values": CSV,
    "application/csv": CSV,
    "application/x-csv": CSV,
    "application/vnd.ms-tnef": "application/ms-tnef",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "application/x-pkcs7-signature": "application/pkcs7-signature",
    "application/x-pkcs7-mime": "application/pkcs7-mime",
}

# Declared types that say nothing about the content.
_GENERIC = {
    OCTET_STREAM,
    "application/x-download",
    "application/force-download",
    "application/download",
    "application/unknown",
    "application/binary",
    "binary/octet-stream",
    "application/x-octet-stream",
    "application/octetstream",
    "application/x-msdownload",
    "",
}

_BY_EXTENSION = {
    "pdf": PDF,
    "zip": ZIP,
    "xlsx": XLSX,
    "xlsm": "application/vnd.ms-excel.sheet.macroenabled.12",
    "xls": XLS,
    "xlt": XLS,
    "csv": CSV,
    "tsv": "text/tab-separated-values",
    "txt": TEXT,
    "docx": DOCX,
    "doc": DOC,
    "pptx": PPTX,
    "xml": "application/xml",
    "json": "application/json",
    "edi": "application/edi-x12",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "heic": "image/heic",
    "webp": "image/webp",
    "p7s": "application/pkcs7-signature",
    "p7m": "application/pkcs7-mime",
    "asc": "application/pgp-signature",
    "dat": OCTET_STREAM,
    "eml": "message/rfc822",
    "htm": "text/html",
    "html": "text/html",
}

_OOXML_BY_DIRECTORY = ((b"xl/", XLSX), (b"word/", DOCX), (b"ppt/", PPTX))
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def normalise(declared: str | None) -> str:
    """`Application/PDF; name=x` -> `application/pdf`; junk -> ''; aliases -> standard name."""
    if not declared:
        return ""
    value = declared.split(";", 1)[0].strip().strip('"').lower()
    value = re.sub(r"\s+", "", value)
    if not _TOKEN.match(value):
        return ""
    return _ALIASES.get(value, value)


def extension(filename: str | None) -> str:
    if not filename or "." not in filename:
        return ""
    return filename.rsplit(".", 1)[1].strip().lower()


def by_extension(filename: str | None) -> str:
    return _BY_EXTENSION.get(extension(filename), "")


def is_generic(mime_type: str) -> bool:
    return mime_type in _GENERIC


def declared_type(declared: str | None, filename: str | None) -> str:
    """The type to classify a part by before its content is read: declared, else by extension."""
    mime_type = normalise(declared)
    if is_generic(mime_type):
        return by_extension(filename) or mime_type or OCTET_STREAM
    return mime_type


def sniff(head: bytes) -> str:
    """The type the first bytes prove, or '' when they prove nothing."""
    stripped = head.lstrip(b"\xef\xbb\xbf\r\n\t ")
    if stripped.startswith(b"%PDF-") or head[:1024].find(b"%PDF-") != -1:
        return PDF
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        for marker, mime_type in _OOXML_BY_DIRECTORY:
            if marker in head:
                return mime_type
        return ZIP
    if head.startswith(_OLE_MAGIC):
        return OLE
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if looks_like_csv(head):
        return CSV
    return ""


def looks_like_csv(head: bytes) -> bool:
    """Text whose first lines share a delimiter count (`,`, `;` or tab), at least two lines."""
    if not head or b"\x00" in head:
        return False
    truncated = len(head) >= HEAD_BYTES
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if truncated and error.start >= len(head) - 4:  # a character cut at the end of the head
            text = head[: error.start].decode("utf-8", "replace")
        else:
            text = head.decode("cp1252", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if truncated:
        lines = lines[:-1]  # the last line may be cut short
    lines = lines[:20]
    if len(lines) < 2:
        return False
    if any(not line.replace("\t", " ").isprintable() for line in lines):
        return False
    for delimiter in (",", ";", "\t"):
        counts = {_count_outside_quotes(line, delimiter) for line in lines}
        if len(counts) == 1 and counts.pop() >= 1:
            return True
    return False


def _count_outside_quotes(line: str, delimiter: str) -> int:
    count = 0
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delimiter and not quoted:
            count += 1
    return count


def refine(declared: str, filename: str | None, head: bytes) -> str:
    """The mime_type to record for a document, from its declared type, name and first bytes.

    - generic or missing types: the content's magic bytes, then the extension;
    - a ZIP that is really an OOXML file (xlsx/docx): the OOXML type; a plain ZIP stays
      application/zip (stored as-is, never unpacked);
    - XLS declared but the content is text: CSV (what Windows mailers send for .csv);
    - text/plain named *.csv: text/csv;
    - an OLE2 file is XLS when the name says so, else stays generic.
    """
    mime_type = normalise(declared)
    sniffed = sniff(head)
    named = by_extension(filename)
    if is_generic(mime_type):
        if sniffed == OLE:
            return named if named in (XLS, DOC) else (named or OCTET_STREAM)
        if sniffed == CSV and named and named != CSV:
            return named  # a .txt that happens to contain commas
        return sniffed or named or OCTET_STREAM
    if mime_type == ZIP and sniffed in (XLSX, DOCX, PPTX):
        return sniffed
    if mime_type == XLS and head and not head.startswith(_OLE_MAGIC) and CSV in (named, sniffed):
        return CSV
    if mime_type == TEXT and named == CSV:
        return CSV
    if mime_type == PDF or sniffed != PDF:
        return mime_type
    # Declared something unrelated (text/plain, image/...) but the bytes are a PDF.
    if mime_type.startswith(("text/", "application/")):
        return PDF
    return mime_type
