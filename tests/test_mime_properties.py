"""Property tests: a differential test against the stdlib `email` builder, and a fuzz test.

- Messages built with `EmailMessage.add_attachment` (nested in forwarded messages, LF or CRLF)
  must yield exactly the attachments they were built with: same names, same bytes.
- Random and mutated bytes never make the extraction raise, and never trip over a bug
  (`walker_failed`): the worst is a result with defects.
"""

from __future__ import annotations

import email.policy
import io
import json
import subprocess
import sys
from email.message import EmailMessage

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mime_builders import PDF, b64, message, sha

from orderflow_ingest.jobs.extract import extract_message
from orderflow_ingest.jobs.filenames import sanitise
from orderflow_ingest.jobs.part_inspection import inspect_stream

TYPES = [
    ("application", "pdf", "pdf"),
    ("application", "octet-stream", "bin"),
    ("application", "zip", "zip"),
    ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    ("application", "vnd.ms-excel", "xls"),
    ("text", "csv", "csv"),
    ("text", "plain", "txt"),
    ("image", "jpeg", "jpg"),
    ("image", "png", "png"),
]

stems = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp"),
        blacklist_characters="/\\",
    ),
    min_size=1,
    max_size=60,
).filter(lambda stem: sanitise(stem + ".x") not in (None, ".x") and stem.strip(" .") != "")

attachments = st.lists(
    st.tuples(stems, st.sampled_from(TYPES), st.binary(max_size=3000), st.booleans()),
    max_size=5,
)
bodies = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    ),
    max_size=300,
)


def build(body: str, files: list[tuple[str, tuple[str, str, str], bytes, bool]]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "buyer@customer.example"
    msg["To"] = "orders+acme@orderflow.test"
    msg["Subject"] = "PO"
    msg.set_content(body or "order")
    for stem, (maintype, subtype, extension), data, inline in files:
        msg.add_attachment(
            data,
            maintype=maintype,
            subtype=subtype,
            filename=f"{stem}.{extension}",
            disposition="inline" if inline else "attachment",
        )
    return msg


def expected(files: list[tuple[str, tuple[str, str, str], bytes, bool]]) -> list[tuple[str, str]]:
    return sorted((sanitise(f"{stem}.{t[2]}") or "", sha(data)) for stem, t, data, _ in files)


def found(raw: bytes) -> list[tuple[str, str]]:
    with extract_message(io.BytesIO(raw)) as extraction:
        assert extraction.error is None
        assert all(d.status == "STORED" for d in extraction.documents)
        return sorted((d.filename, d.sha256) for d in extraction.documents)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, files=attachments, crlf=st.booleans())
def test_stdlib_built_messages_yield_their_attachments(
    body: str, files: list[tuple[str, tuple[str, str, str], bytes, bool]], crlf: bool
) -> None:
    msg = build(body, files)
    policy = email.policy.SMTP if crlf else email.policy.default
    assert found(msg.as_bytes(policy=policy)) == expected(files)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outer=attachments, inner=attachments, depth=st.integers(min_value=1, max_value=3))
def test_forwarded_messages_yield_every_attachment_at_any_depth(
    outer: list[tuple[str, tuple[str, str, str], bytes, bool]],
    inner: list[tuple[str, tuple[str, str, str], bytes, bool]],
    depth: int,
) -> None:
    msg = build("innermost", inner)
    for _ in range(depth):
        wrapper = build("forwarding", [])
        wrapper.add_attachment(msg)  # message/rfc822
        msg = wrapper
    for stem, (maintype, subtype, extension), data, _inline in outer:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=f"{stem}.{extension}")
    assert found(msg.as_bytes()) == sorted(expected(inner) + expected(outer))


SEED = message(
    "From: a@b",
    "Subject: Gr\udcfc\udcdfe",
    'Content-Type: multipart/mixed; boundary="b"',
    "",
    "--b",
    "Content-Type: text/html",
    "",
    '<img src="cid:x">',
    "--b",
    "Content-Type: application/pdf; name*0*=utf-8''%C3%9C; name*1=\"x.pdf\"",
    "Content-Transfer-Encoding: base64",
    "",
    b64(PDF),
    "--b",
    "Content-Type: message/rfc822",
    "",
    "Content-Type: multipart/related; boundary=r",
    "",
    "--r",
    "Content-Type: image/png; name=a.png",
    "Content-ID: <x>",
    "Content-Transfer-Encoding: x-uuencode",
    "",
    "begin 644 a.png",
    "#86)C",
    "end",
    "--r--",
    "--b",
    'Content-Type: application/ms-tnef; name="w\udcf6rk \udcff.dat"',
    "Content-Transfer-Encoding: quoted-printable",
    "",
    'x=9F>"=01=00',
    "--b--",
)


def assert_survives(data: bytes) -> None:
    with extract_message(io.BytesIO(data)) as extraction:
        if extraction.error is not None:
            assert extraction.error["error"] == "unparseable", extraction.error
        # Everything must be storable text: no lone surrogates from 8-bit header bytes.
        json.dumps(extraction.as_json(), ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert_survives(data)
    result = inspect_stream(io.BytesIO(data))
    assert set(result) >= {"documents", "skipped", "defects"}


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(
        st.tuples(st.integers(0, len(SEED)), st.integers(0, 40), st.binary(max_size=12)), max_size=6
    )
)
def test_mutated_messages_never_raise(cuts: list[tuple[int, int, bytes]]) -> None:
    data = SEED
    for position, length, insert in cuts:
        data = data[:position] + insert + data[position + length :]
    assert_survives(data)


def test_inspect_cli_never_crashes_on_garbage(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "garbage.eml"
    path.write_bytes(b"\x00\xff--\n\n--\r\nContent-Type: multipart/mixed; boundary=\n" * 50)
    done = subprocess.run(
        [sys.executable, "-m", "orderflow_ingest.entry", "inspect", str(path), "--json"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert b'"documents"' in done.stdout
