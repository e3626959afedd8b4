"""Drive the milter in-process the way Postfix does, on pymilter's test context.

`Milter.testctx.TestCtx` supplies the context object a Milter.Base instance talks to
(setreply, getsymval, negotiation). Its own message feeding re-serialises headers through
the email package and treats NOREPLY as a failure, so this subclass feeds exactly what Postfix
sends: the header value after the colon verbatim (we negotiate SMFIP_HDR_LEADSPC),
continuation lines joined by LF, the body in CRLF chunks; and it records header edits and
applies them the way Postfix's cleanup does (1-based index among same-named headers).
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dkim
import Milter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from Milter.testctx import TestCtx

RESULT_NAMES = {
    Milter.CONTINUE: "continue",
    Milter.REJECT: "reject",
    Milter.TEMPFAIL: "tempfail",
    Milter.ACCEPT: "accept",
    Milter.DISCARD: "discard",
    Milter.NOREPLY: "continue",
}


@dataclass
class Step:
    result: str
    reply: tuple[Any, ...] | None


@dataclass
class Transaction:
    connect: Step | None = None
    rcpt: list[Step] = field(default_factory=list)
    data: Step | None = None
    eom: Step | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)  # after the milter's edits
    body: bytes = b""

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def message(self) -> bytes:
        lines = [f"{key}:{value}".replace("\n", "\r\n") for key, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


def split_message(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Headers as Postfix hands them to a milter: (name, value after ':' with LF joins)."""
    raw = raw.replace(b"\r\n", b"\n")
    head, _, body = raw.partition(b"\n\n")
    headers: list[tuple[str, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and headers:
            previous, value = headers[-1]
            headers[-1] = (previous, value + b"\n" + line)
        else:
            label, _, value = line.partition(b":")
            headers.append((label.decode("ascii").rstrip(), value))
    return headers, body.replace(b"\n", b"\r\n")


class PostfixLikeCtx(TestCtx):
    def __init__(self, macros: dict[str, str] | None = None):
        super().__init__()
        self._macros.update(macros or {"i": "4ABCDEF123", "j": "mx.test"})
        self.header_ops: list[tuple[Any, ...]] = []
        self._stage = -1

    # The actions a milter calls at end of message: recorded, applied after eom.
    def addheader(self, field: str, value: str, idx: int) -> None:
        self.header_ops.append(("insert" if idx >= 0 else "add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        self.header_ops.append(("change", field, idx, value))

    def _step(self, stage: int, call: Callable[[], int]) -> Step:
        self._reply = None
        self._stage = stage
        try:
            rc = call()
        finally:
            self._stage = -1
        return Step(RESULT_NAMES.get(rc, str(rc)), self._reply)

    def transaction(
        self,
        raw: bytes,
        sender: str,
        recipients: Iterable[str],
        ip: str = "192.0.2.10",
        helo: str = "mail.sender.test",
        chunk: int = 8192,
        connected: bool = False,
    ) -> Transaction:
        result = Transaction()
        if not connected:
            self._negotiate()
            priv = self._priv
            family = 10 if ":" in ip else 2
            result.connect = self._step(
                Milter.M_CONNECT, lambda: priv.connect("client.test", family, (ip, 40000))
            )
            self._step(Milter.M_HELO, lambda: priv.hello(helo))
        priv = self._priv
        self._step(Milter.M_ENVFROM, lambda: priv.envfrom_bytes(f"<{sender}>".encode()))
        for rcpt in recipients:
            result.rcpt.append(
                self._step(
                    Milter.M_ENVRCPT, functools.partial(priv.envrcpt_bytes, f"<{rcpt}>".encode())
                )
            )
        if not any(step.result == "continue" for step in result.rcpt):
            return result
        result.data = self._step(Milter.M_DATA, priv.data)
        if result.data.result != "continue":
            return result
        headers, body = split_message(raw)
        for name, value in headers:
            self._step(Milter.M_EOH, functools.partial(priv.header_bytes, name, value))
        self._step(Milter.M_EOH, priv.eoh)
        for start in range(0, len(body), chunk):
            self._step(Milter.M_EOM, functools.partial(priv.body, body[start : start + chunk]))
        self.header_ops = []
        self._body = io.BytesIO()
        result.eom = self._step(Milter.M_EOM, priv.eom)
        # Postfix's own Received header tops the message but is never shown to a milter.
        received = f" from client.test (client.test [{ip}])\n\tby mx.test (Postfix)"
        result.headers = apply_header_ops(
            [("Received", received)]
            + [(n, v.decode("utf-8", "surrogateescape")) for n, v in headers],
            self.header_ops,
        )
        result.body = body
        return result

    def close(self) -> None:
        if self._priv is not None:
            self._priv.close()


def apply_header_ops(
    headers: list[tuple[str, str]], ops: list[tuple[Any, ...]]
) -> list[tuple[str, str]]:
    """Postfix's semantics: change/delete by 1-based index among same-named headers (current
    header list), insert at a 0-based position counting Postfix's own Received header (index
    0 is above it), add at the end."""
    headers = list(headers)
    for op in ops:
        if op[0] == "change":
            _, name, idx, value = op
            positions = [i for i, (n, _) in enumerate(headers) if n.lower() == name.lower()]
            if idx - 1 < len(positions):
                where = positions[idx - 1]
                if value in (None, ""):
                    del headers[where]
                else:
                    headers[where] = (headers[where][0], value)
        elif op[0] == "insert":
            _, name, value, idx = op
            headers.insert(idx, (name, value))
        else:
            _, name, value, _ = op
            headers.append((name, value))
    return headers


class FakeDns:
    """A dict-backed DnsSource: {(name, type): records}; the value "timeout" raises."""

    def __init__(self, records: dict[tuple[str, str], Any] | None = None):
        self.records: dict[tuple[str, str], Any] = dict(records or {})
        self.queries: list[tuple[str, str]] = []

    def txt(self, name: str, *texts: str) -> None:
        self.records[(name, "TXT")] = [(text.encode(),) for text in texts]

    def query(self, name: str, rdtype: str, timeout: float) -> list[Any]:
        from orderflow_ingest.milter.dns import DnsTempError

        key = (name.rstrip(".").lower(), rdtype.upper())
        self.queries.append(key)
        value = self.records.get(key, [])
        if value == "timeout":
            raise DnsTempError(f"timeout {key}")
        return list(value)


@dataclass
class SigningKey:
    selector: str
    domain: str
    algorithm: str  # "rsa" or "ed25519"
    private: bytes  # what dkim.sign takes
    public_record: str  # the TXT at selector._domainkey.domain

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(
        self,
        message: bytes,
        canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple"),
        **options: Any,
    ) -> bytes:
        """The message with this key's DKIM-Signature prepended."""
        signature_algorithm = b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"
        header = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private,
            canonicalize=canonicalize,
            signature_algorithm=signature_algorithm,
            **options,
        )
        return bytes(header) + message


def rsa_key(selector: str, domain: str, bits: int = 2048) -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
    return SigningKey(selector, domain, "rsa", private, record)


def ed25519_key(selector: str, domain: str) -> SigningKey:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode()
    return SigningKey(selector, domain, "ed25519", base64.b64encode(private), record)


def make_message(
    from_addr: str = "Buyer <buyer@sender.test>",
    to_addr: str = "orders+acme@orders.test",
    subject: str = "PO 4711",
    body: bytes = b"Please deliver 10 widgets.\r\n",
    extra_headers: Iterable[tuple[str, str]] = (),
    message_id: str = "<po-4711@sender.test>",
) -> bytes:
    headers = [
        ("From", from_addr),
        ("To", to_addr),
        ("Subject", subject),
        ("Date", "Tue, 03 Feb 2026 10:00:00 +0000"),
        ("Message-ID", message_id),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        *extra_headers,
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode() + b"\r\n" + body
