"""The rules for what is a document, as pure functions: every part gets a kind and a reason.

Ingestion systems lose orders here, quietly: Apple Mail marks PDFs inline, phones send a photo
of the order as an unreferenced inline image, Outlook wraps everything in winmail.dat. So every
part's decision carries a human-readable reason that `inspect`, the logs and the
inbound_message_part table show; nothing is dropped without one.

An image is a body image only when an HTML body of the same message references it (cid: or
Content-Location). Having a Content-ID, being inline, or sitting in multipart/related proves
nothing: Apple Mail gives every inline image a Content-ID, even a photographed order in a
text/plain message. The reference may come after the image, so every image is a
CANDIDATE_IMAGE until `decide_image` settles it (at once when a body already referenced it,
else after the walk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote

from orderflow_ingest.jobs import file_types
from orderflow_ingest.jobs.walker import PartInfo


class Kind(StrEnum):
    CONTAINER = "container"  # multipart/*, message/rfc822: walked into, not a document
    DOCUMENT = "document"
    BODY = "body"  # body text
    INLINE_IMAGE = "inline-image"  # an image the body shows
    SIGNATURE = "signature"
    REPORT = "report"  # delivery and disposition reports
    NOT_DOCUMENT = "not-document"  # anything else that is not a file
    TNEF = "tnef"  # winmail.dat: unpacked, its files become documents
    ENCODED_MESSAGE = "encoded-message"  # message/rfc822 with base64/QP: decoded, then walked
    CANDIDATE_IMAGE = "candidate-image"  # decided after the walk by the body's references
    SKIPPED = "skipped"  # a document over the per-message cap: not extracted, the raw keeps it


@dataclass(frozen=True)
class Decision:
    kind: Kind
    reason: str

    @property
    def captures(self) -> bool:
        """Does the part's decoded body need to be kept (spooled, hashed)?"""
        return self.kind in (Kind.DOCUMENT, Kind.TNEF, Kind.ENCODED_MESSAGE, Kind.CANDIDATE_IMAGE)


SIGNATURE_TYPES = {
    "application/pkcs7-signature",
    "application/pgp-signature",
}
REPORT_TYPES = {
    "message/delivery-status": "delivery status report",
    "message/global-delivery-status": "delivery status report",
    "message/disposition-notification": "read receipt (disposition notification)",
    "message/global-disposition-notification": "read receipt (disposition notification)",
    "message/feedback-report": "abuse feedback report",
    "text/rfc822-headers": "headers of a returned message",
    "message/global-headers": "headers of a returned message",
}
OTHER_NOT_DOCUMENTS = {
    "message/partial": "message/partial fragment (not reassembled)",
    "message/external-body": "reference to an external body (no content here)",
    "application/pgp-encrypted": "PGP/MIME control part",
    "application/pgp-keys": "public key material",
}
TNEF_TYPES = {"application/ms-tnef"}
# Leaves of these types are files even without a name: a bare application/pdf part in
# multipart/mixed is an order from an ERP system, not body text.
NAMELESS_FILE_TYPES = {
    file_types.PDF,
    file_types.ZIP,
    file_types.XLSX,
    file_types.XLS,
    file_types.DOCX,
    file_types.DOC,
    file_types.OCTET_STREAM,
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.ms-excel.sheet.macroenabled.12",
}


def classify_container(info: PartInfo, walked: bool, reason: str) -> Decision:
    if walked:
        return Decision(Kind.CONTAINER, reason)
    return Decision(Kind.NOT_DOCUMENT, f"{info.content_type} not walked: {reason}")


def classify_leaf(info: PartInfo) -> Decision:
    """Decide a leaf from its headers (images with a name wait for `decide_image`)."""
    content_type = file_types.declared_type(info.content_type, info.filename)
    named = info.filename is not None
    attachment = info.disposition == "attachment"

    if content_type in SIGNATURE_TYPES:
        return Decision(Kind.SIGNATURE, f"signature ({content_type}), not a document")
    if content_type in REPORT_TYPES:
        return Decision(Kind.REPORT, f"{REPORT_TYPES[content_type]} ({content_type})")
    if content_type in OTHER_NOT_DOCUMENTS:
        return Decision(Kind.NOT_DOCUMENT, OTHER_NOT_DOCUMENTS[content_type])
    if content_type in TNEF_TYPES or (
        (info.filename or "").lower() == "winmail.dat" and file_types.is_generic(content_type)
    ):
        return Decision(Kind.TNEF, "Outlook TNEF (winmail.dat): the files inside are documents")
    if content_type in ("message/rfc822", "message/global"):
        return Decision(
            Kind.ENCODED_MESSAGE,
            f"attached message in {info.encoding or 'unknown'} encoding: decoded and walked into",
        )
    if content_type.startswith("image/"):
        return Decision(Kind.CANDIDATE_IMAGE, "image: a document unless an HTML body references it")
    if content_type.startswith("text/") and not named and not attachment:
        return Decision(Kind.BODY, f"body text ({content_type})")
    if named:
        where = "inline part" if info.disposition == "inline" else "part"
        if attachment:
            where = "attachment"
        return Decision(Kind.DOCUMENT, f"{where} with a filename")
    if attachment:
        return Decision(Kind.DOCUMENT, "disposition attachment without a filename: named by part")
    if info.encoding in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return Decision(Kind.DOCUMENT, "uuencoded file")
    if content_type in NAMELESS_FILE_TYPES:
        return Decision(Kind.DOCUMENT, f"{content_type} part without a filename: a file, not body")
    if content_type.startswith("multipart/"):
        return Decision(Kind.NOT_DOCUMENT, "multipart without a boundary: nothing to walk")
    return Decision(
        Kind.NOT_DOCUMENT, f"{content_type or 'untyped'} part without a filename, not an attachment"
    )


_CID = re.compile(rb"cid:([^\s\"'<>)\\]+)", re.IGNORECASE)
_URL_ATTRIBUTE = re.compile(
    rb"(?:src|href|background|data|poster)\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))",
    re.IGNORECASE,
)
_CSS_URL = re.compile(rb"url\(\s*[\"']?([^\"')]+)", re.IGNORECASE)


@dataclass
class References:
    """What HTML bodies point at: Content-IDs and URLs (bounded: a body cannot exhaust memory)."""

    cids: set[str] = field(default_factory=set)  # lower case: Content-IDs are matched so
    urls: set[str] = field(default_factory=set)
    limit: int = 10000
    MAX_LENGTH = 2048  # a Content-ID or URL longer than this references no part of ours

    def add_cid(self, value: str) -> None:
        if len(self.cids) < self.limit and len(value) <= self.MAX_LENGTH:
            self.cids.add(value.lower())
            self.cids.add(unquote(value).lower())

    def add_url(self, value: str) -> None:
        if len(self.urls) < self.limit and value and len(value) <= self.MAX_LENGTH:
            self.urls.add(value.strip())

    def references(self, info: PartInfo) -> str | None:
        """How the body refers to this part, or None."""
        if info.content_id and info.content_id.lower() in self.cids:
            return f"cid:{info.content_id}"
        location = (info.content_location or "").strip()
        if location and any(url == location or url.endswith("/" + location) for url in self.urls):
            return location
        return None


class ReferenceScanner:
    """A sink for decoded HTML body bytes that records cid: and URL references.

    Scans whole tags: text after the last `>` waits for the next chunk (at most 8 KiB of it).
    """

    CARRY = 8192

    def __init__(self, references: References) -> None:
        self._references = references
        self._carry = b""

    def write(self, data: bytes) -> None:
        text = self._carry + data if self._carry else data
        cut = text.rfind(b">") + 1
        if cut == 0 and len(text) <= self.CARRY:
            self._carry = text
            return
        if cut == 0 or len(text) - cut > self.CARRY:
            cut = len(text)
        self._carry = text[cut:]
        self._scan(text[:cut])

    def close(self) -> None:
        if self._carry:
            self._scan(self._carry)
            self._carry = b""

    def _scan(self, text: bytes) -> None:
        lowered = text.lower()
        if b"cid:" in lowered:
            for match in _CID.finditer(text):
                self._references.add_cid(match.group(1).decode("utf-8", "replace"))
        if b"=" in text:
            for match in _URL_ATTRIBUTE.finditer(text):
                raw = match.group(1) or match.group(2) or match.group(3) or b""
                self._references.add_url(raw.decode("utf-8", "replace"))
        if b"url(" in lowered:
            for match in _CSS_URL.finditer(text):
                self._references.add_url(match.group(1).decode("utf-8", "replace"))


def referenced_image(info: PartInfo, references: References) -> Decision | None:
    """INLINE_IMAGE when a body scanned so far references this image, else None (undecided)."""
    how = references.references(info)
    if how is None:
        return None
    where = " (multipart/related)" if info.in_related else ""
    return Decision(Kind.INLINE_IMAGE, f"inline body image: the HTML body references {how}{where}")


def decide_image(info: PartInfo, references: References) -> Decision:
    """Settle a CANDIDATE_IMAGE once every HTML body has been scanned."""
    inline = referenced_image(info, references)
    if inline is not None:
        return inline
    if info.filename is None:
        return Decision(
            Kind.DOCUMENT, "image that nothing references, without a filename: named by part"
        )
    return Decision(
        Kind.DOCUMENT, "image with a filename that nothing references (photo of an order)"
    )
