"""`show`/`trace` never write sender-chosen control characters to the terminal (item 12).

The Subject, Message-ID and attachment filenames are the sender's; a row holding an ESC
sequence (clear screen, set title), a C1 CSI, a bidi override or a newline that forges an
output line is shown with visible escapes, in text and in --json.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from ops_support import cli
from psycopg.rows import dict_row

from orderflow_ingest.ops.terminal import safe_json, terminal_safe

HOSTILE_SUBJECT = "Order\x1b]2;pwned\x07\x1b[2J\x9b31m\u202eFDP.exe\nstatus       PARSED"
HOSTILE_FILE = "\x1b[1A\x1b[2Kinvoice\r.pdf"
# Bytes a terminal acts on; none may reach stdout.
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


def test_item12_terminal_safe_escapes_controls_visibly() -> None:
    assert terminal_safe("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert terminal_safe("x\x9by\u202ez\udcff\n") == "x\\x9by\\u202ez\\udcff\\x0a"
    assert terminal_safe("Bestellung Größe 😀") == "Bestellung Größe 😀"
    text = safe_json(json.dumps({"s": HOSTILE_SUBJECT}, ensure_ascii=False))
    assert not any(control in text for control in RAW_CONTROLS)
    assert json.loads(text) == {"s": HOSTILE_SUBJECT}  # the JSON values stay exact


@pytest.fixture
def hostile_message(settings: Any) -> dict[str, str]:
    """A message and document row holding what a sender controls, written as the runtime
    role writes them."""
    message_id = f"<\x1b[2J{uuid.uuid4().hex}\x1b]0;t\x07@evil.example>"
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        row = db.execute(
            "INSERT INTO inbound_message (org_id, source, source_message_id, subject,"
            " received_at, status, trace_id, raw_storage_key)"
            " SELECT id, 'EMAIL', %s, %s, now(), 'RECEIVED', %s, NULL FROM org"
            " WHERE slug = 'acme' RETURNING id::text AS id, org_id::text AS org_id",
            (message_id, HOSTILE_SUBJECT, uuid.uuid4().hex),
        ).fetchone()
        assert row is not None
        db.execute(
            "INSERT INTO document (org_id, inbound_message_id, part_path, file_name, mime_type,"
            " size_bytes, sha256, storage_key) VALUES (%s, %s, '2', %s, 'application/pdf', 1,"
            " %s, %s)",
            (row["org_id"], row["id"], HOSTILE_FILE, "0" * 64, f"doc/{row['id']}/2"),
        )
        db.execute(
            "UPDATE inbound_message SET status = 'FAILED', error_json = %s WHERE id = %s",
            (json.dumps({"stage": "test", "reason": "hostile \x1b[5m text"}), row["id"]),
        )
    return {"id": row["id"], "message_id": message_id}


@pytest.mark.stack
def test_item12_show_and_trace_escape_control_characters(
    stack: Any, hostile_message: dict[str, str]
) -> None:
    for command in ("show", "trace"):
        result = cli(stack, command, hostile_message["id"])
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        for control in RAW_CONTROLS:
            assert control not in out, (command, repr(control))
        assert "\\x1b]2;pwned\\x07\\x1b[2J\\x9b31m\\u202eFDP.exe\\x0astatus" in out
        assert "\\x1b[1A\\x1b[2Kinvoice\\x0d.pdf" in out
        assert "\\x1b[2J" in out.split("Message-ID", 1)[1].split("\n", 1)[0]
        # The forged "status PARSED" line stays inside the subject line.
        assert not any(line.startswith("status       PARSED") for line in out.splitlines())

    result = cli(stack, "show", hostile_message["id"], "--json")
    assert result.returncode == 0, result.stderr
    for control in RAW_CONTROLS:
        assert control not in result.stdout
    (story,) = json.loads(result.stdout)
    assert story["inbound_message"]["subject"] == HOSTILE_SUBJECT
    assert story["inbound_message"]["source_message_id"] == hostile_message["message_id"]
    assert [doc["file_name"] for doc in story["documents"]] == [HOSTILE_FILE]
