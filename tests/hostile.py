"""A corpus of malformed and adversarial messages (issue 7, scenario 4).

Each entry is (name, raw bytes, expectation). "stored" means Postfix must accept it and the
message must end PARSED or FAILED with a reason; "refused" means Postfix must refuse it at SMTP
time with a clear code. Nothing in here may crash a component or bounce for our fault.
"""

from __future__ import annotations

import base64
import io
import uuid
import zipfile
from collections.abc import Callable

from samples import minimal_pdf

CRLF = b"\r\n"


def multipart(boundary: bytes) -> bytes:
    return b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="' + boundary + b'"\r\n'


def _headers(marker: str, to: str, extra: bytes = b"") -> bytes:
    return (
        b"From: Hostile <hostile@attacker.example>\r\n"
        + b"To: "
        + to.encode()
        + CRLF
        + b"Subject: hostile "
        + marker.encode()
        + CRLF
        + b"Date: Sat, 21 Nov 2026 10:14:00 +0000\r\n"
        + b"Message-ID: <"
        + marker.encode()
        + b"@attacker.example>\r\n"
        + extra
    )


def broken_boundary(marker: str, to: str) -> bytes:
    """The declared boundary never appears; the closing one is missing."""
    return (
        _headers(marker, to, multipart(b"XYZ"))
        + CRLF
        + b"--ABC\r\nContent-Type: application/pdf\r\n\r\n"
        + minimal_pdf()
        + b"\r\n--ABC\r\n"
    )


def missing_headers(marker: str, to: str) -> bytes:
    """No From, no Date, no Message-ID, no MIME-Version: body only after a Subject."""
    return b"Subject: bare " + marker.encode() + CRLF + CRLF + b"just text\r\n"


def duplicate_headers(marker: str, to: str) -> bytes:
    extra = (
        b"Message-ID: <second-" + marker.encode() + b"@attacker.example>\r\n"
        b"Subject: second subject\r\nFrom: other@attacker.example\r\n"
        b"Content-Type: text/plain\r\nContent-Type: application/pdf\r\n"
    )
    return _headers(marker, to, extra) + CRLF + b"body\r\n"


def eight_bit_garbage_in_headers(marker: str, to: str) -> bytes:
    extra = b"X-Garbage: \xff\xfe\x80\x81 caf\xe9 \xc3\x28\r\nSubject: \xe4\xf6\xfc raw latin-1\r\n"
    return _headers(marker, to, extra) + CRLF + b"body \xff\r\n"


def deeply_nested(marker: str, to: str, depth: int = 120) -> bytes:
    body = b""
    for level in range(depth):
        body += b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (
            level,
            level + 1,
        )
    body += b"--b%d\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;" % depth
    body += b' filename="deep.pdf"\r\n\r\n' + minimal_pdf() + CRLF
    for level in range(depth, -1, -1):
        body += b"--b%d--\r\n" % level
    return _headers(marker, to, multipart(b"b0")) + CRLF + body


def thousands_of_tiny_parts(marker: str, to: str, parts: int = 3000) -> bytes:
    body = b"".join(
        b"--t\r\nContent-Type: text/csv\r\n"
        b'Content-Disposition: attachment; filename="p%d.csv"\r\n\r\na,%d\r\n' % (index, index)
        for index in range(parts)
    )
    return _headers(marker, to, multipart(b"t")) + CRLF + body + b"--t--\r\n"


def hostile_filenames(marker: str, to: str) -> bytes:
    names = [
        b"../../../../etc/passwd",
        b"..\\..\\windows\\system32\\evil.pdf",
        b"/absolute/path.pdf",
        b"control\x01\x07\x1bchars.pdf",
        b"new\r\n line.pdf",  # folded into the header, a header injection attempt
        b"=?UTF-8?B?Li4vLi4vZXRjL3NoYWRvdw==?=",  # "../../etc/shadow", RFC 2047 encoded
        b"." * 300 + b".pdf",
        b"nul\x00byte.pdf",
    ]
    parts = b"".join(
        b"--h\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="'
        + name
        + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n'
        for name in names
    )
    return _headers(marker, to, multipart(b"h")) + CRLF + parts + b"--h--\r\n"


def header_injection(marker: str, to: str) -> bytes:
    """CR/LF smuggled into a Subject and an encoded word that decodes to a header line."""
    extra = (
        b"Subject: =?UTF-8?Q?hi=0D=0ABcc:_victim@example.com=0D=0AX-Injected:_yes?=\r\n"
        b"X-Note: line\rBcc: bare-cr@example.com\r\n"
    )
    return _headers(marker, to, extra) + CRLF + b"body\r\n"


def zip_bomb(marker: str, to: str) -> bytes:
    """~20 KB of ZIP that inflates to 200 MB: stored as-is, never unpacked."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("bomb.bin", "w", force_zip64=True) as member,
    ):
        chunk = b"\0" * (1024 * 1024)
        for _ in range(200):
            member.write(chunk)
    encoded = base64.encodebytes(buffer.getvalue())
    return (
        _headers(marker, to, multipart(b"z"))
        + CRLF
        + b"--z\r\nContent-Type: application/zip\r\n"
        + b'Content-Disposition: attachment; filename="order.zip"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--z--\r\n"
    )


def oversized_header_block(marker: str, to: str) -> bytes:
    """~1.2 MB of folded header: past our parsing limit, so stored raw and FAILED."""
    filler = b"X-Filler: " + (b"y" * 900 + b"\r\n ") * 1300 + CRLF
    return _headers(marker, to, filler) + CRLF + b"body\r\n"


def nul_bytes(marker: str, to: str) -> bytes:
    extra = b"X-Nul: a\x00b\r\n"
    return _headers(marker, to, extra) + CRLF + b"body with \x00 NUL \x00 bytes\r\n"


def bare_lf_and_long_lines(marker: str, to: str) -> bytes:
    return _headers(marker, to).replace(CRLF, b"\n") + b"\n" + b"x" * 5000 + b"\nend\n"


def corrupt_base64(marker: str, to: str) -> bytes:
    return (
        _headers(marker, to, multipart(b"c"))
        + CRLF
        + b"--c\r\nContent-Type: application/pdf\r\n"
        + b'Content-Disposition: attachment; filename="po.pdf"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0x!!!LjQK*=\r\n====\r\n--c--\r\n"
    )


# --- added for the reliability suite: gaps the first corpus left open -------------------------


def nested_rfc822(marker: str, to: str, depth: int = 60) -> bytes:
    """A forwarded mail inside a forwarded mail, 60 deep, a PDF at the bottom."""
    inner = (
        b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="d.pdf"'
        b"\r\n\r\n" + minimal_pdf() + CRLF
    )
    for level in range(depth):
        inner = (
            b"Content-Type: message/rfc822\r\n\r\nSubject: fwd %d\r\n" % level
            + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="n%d"\r\n\r\n' % level
            + b"--n%d\r\n" % level
            + inner
            + b"--n%d--\r\n" % level
        )
    return _headers(marker, to, multipart(b"top")) + CRLF + b"--top\r\n" + inner + b"--top--\r\n"


def rfc2231_continuation_flood(marker: str, to: str, pieces: int = 2000) -> bytes:
    """A filename in 2,000 RFC 2231 continuations, with an unknown charset."""
    params = b"".join(b";\r\n filename*%d*=%%2e%%2e%%2fx%d" % (n, n) for n in range(pieces))
    return (
        _headers(marker, to, multipart(b"r"))
        + CRLF
        + b"--r\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;"
        + b" filename*0*=x-bogus-charset''start"
        + params
        + b"\r\n\r\n"
        + minimal_pdf()
        + b"\r\n--r--\r\n"
    )


def encoded_word_flood(marker: str, to: str, words: int = 5000) -> bytes:
    """Thousands of RFC 2047 encoded words in the Subject and a filename, mixed charsets."""
    subject = b" ".join(
        b"=?%s?B?QUJD?=" % (b"utf-8" if n % 3 else b"x-unknown") for n in range(words)
    )
    name = b" ".join(b"=?utf-8?Q?=2E=2E=2F?=" for _ in range(500))
    return (
        _headers(marker, to, b"X-Flood: " + subject + CRLF + multipart(b"e"))
        + CRLF
        + b'--e\r\nContent-Type: application/pdf; name="'
        + name
        + b'"\r\n\r\n'
        + minimal_pdf()
        + b"\r\n--e--\r\n"
    )


def one_huge_base64_line(marker: str, to: str) -> bytes:
    """2 MB of base64 on one line: Postfix splits lines at line_length_limit (2048)."""
    payload = base64.b64encode(b"%PDF-1.4\n" + bytes(range(256)) * 6000)
    return (
        _headers(marker, to, multipart(b"l"))
        + CRLF
        + b"--l\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;"
        + b' filename="long.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + payload
        + b"\r\n--l--\r\n"
    )


def header_only(marker: str, to: str) -> bytes:
    """Headers and no body at all: not even the empty line that ends the header block."""
    return _headers(marker, to, b'Content-Type: multipart/mixed; boundary="never"\r\n')


def corrupt_tnef(marker: str, to: str) -> bytes:
    """A winmail.dat with the TNEF signature and garbage after it (lengths past the end)."""
    garbage = b"\x78\x9f\x3e\x22\x01\x00" + b"\x02\x00\x80\x06\x00\xff\xff\xff\x7f" + b"A" * 64
    return (
        _headers(marker, to, multipart(b"w"))
        + CRLF
        + b"--w\r\nContent-Type: application/ms-tnef\r\n"
        + b'Content-Disposition: attachment; filename="winmail.dat"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(garbage)
        + b"--w--\r\n"
    )


def unknown_encoding_and_charset(marker: str, to: str) -> bytes:
    return (
        _headers(marker, to, multipart(b"u"))
        + CRLF
        + b"--u\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n"
        + b"Content-Transfer-Encoding: x-martian\r\n\r\n\xff\xfe body\r\n"
        + b"--u\r\nContent-Type: application/pdf; name=po.pdf\r\n"
        + b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 po.pdf\r\n"
        + b"#)5!$1@``\r\n`\r\nend\r\n--u--\r\n"
    )


def message_partial(marker: str, to: str) -> bytes:
    """One fragment of a message/partial set: never reassembled, stored as it is."""
    extra = (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: message/partial; id="frag-' + marker.encode() + b'"; number=2; total=3\r\n'
    )
    return _headers(marker, to, extra) + CRLF + b"Content-Type: application/pdf\r\n\r\n%PDF-1\r\n"


def long_boundary(marker: str, to: str) -> bytes:
    """A 300-character boundary (RFC 2046 allows 70), and its prefix inside the content."""
    boundary = b"B" * 300
    return (
        _headers(marker, to, multipart(boundary))
        + CRLF
        + b"--"
        + boundary
        + b'\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="a.csv"'
        + b"\r\n\r\n--"
        + boundary[:150]
        + b"\r\na,1\r\n--"
        + boundary
        + b"--\r\n"
    )


Builder = Callable[[str, str], bytes]
CORPUS: dict[str, Builder] = {
    "broken_boundary": broken_boundary,
    "missing_headers": missing_headers,
    "duplicate_headers": duplicate_headers,
    "eight_bit_garbage_in_headers": eight_bit_garbage_in_headers,
    "deeply_nested": deeply_nested,
    "thousands_of_tiny_parts": thousands_of_tiny_parts,
    "hostile_filenames": hostile_filenames,
    "header_injection": header_injection,
    "zip_bomb": zip_bomb,
    "oversized_header_block": oversized_header_block,
    "nul_bytes": nul_bytes,
    "bare_lf_and_long_lines": bare_lf_and_long_lines,
    "corrupt_base64": corrupt_base64,
    "nested_rfc822": nested_rfc822,
    "rfc2231_continuation_flood": rfc2231_continuation_flood,
    "encoded_word_flood": encoded_word_flood,
    "one_huge_base64_line": one_huge_base64_line,
    "header_only": header_only,
    "corrupt_tnef": corrupt_tnef,
    "unknown_encoding_and_charset": unknown_encoding_and_charset,
    "message_partial": message_partial,
    "long_boundary": long_boundary,
}


def build(name: str, to: str) -> tuple[str, bytes]:
    """(marker, raw message); the marker is in the envelope sender for finding its row."""
    marker = f"{name}-{uuid.uuid4().hex[:12]}"
    return marker, CORPUS[name](marker, to)
