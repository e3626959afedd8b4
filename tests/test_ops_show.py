"""`show`/`trace` and `raw` against the stack: from any identifier an operator has to the
whole story, and the stored raw message back, byte for byte."""

from __future__ import annotations

import hashlib
import subprocess
from typing import Any

import pytest
from conftest import send_mail
from ops_support import CLI, cli, cli_json, env_with, run_worker, wait_for, wait_status
from samples import address, minimal_pdf, order_email

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def parsed_order(stack: Any, make_db: Any) -> dict[str, Any]:
    """One order with two attachments, delivered through Postfix and extracted."""
    msg = order_email(
        attachments=[
            ("PO-4711.pdf", "application/pdf", minimal_pdf()),
            ("delivery-notes.txt", "text/plain", b"Ring twice.\n"),
        ]
    )
    send_mail(stack, msg, [address("acme")])
    with make_db() as db:
        wait_status(db, msg["Message-ID"], ("STORED",))
        run_worker(stack)
        row = wait_status(db, msg["Message-ID"], ("PARSED",))
        docs = db.execute(
            "SELECT id::text AS id, file_name FROM document WHERE inbound_message_id = %s"
            " ORDER BY part_path",
            (row["id"],),
        ).fetchall()
    return {"row": row, "documents": docs, "message": msg}


@pytest.fixture(scope="module")
def make_db(settings: Any) -> Any:
    import psycopg
    from psycopg.rows import dict_row

    return lambda: psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row)


def test_show_tells_the_whole_story(stack: Any, parsed_order: dict[str, Any]) -> None:
    row = parsed_order["row"]
    code, stories = cli_json(stack, "show", row["source_message_id"])
    assert code == 0
    (story,) = stories
    assert story["in_database"] is True
    assert story["inbound_message"]["id"] == row["id"]
    assert story["inbound_message"]["status"] == "PARSED"
    assert story["org"]["slug"] == "acme"
    assert story["envelope"] == {
        "sender": "buyer@customer.example",
        "recipient": address("acme"),
        "postfix_queue_id": row["postfix_queue_id"],
    }
    assert [event["status"] for event in story["history"]] == ["RECEIVED", "STORED", "PARSED"]
    raw = story["storage"]["raw"]
    assert raw["key"] == row["raw_storage_key"]
    assert raw["present"] is True and raw["size_bytes"] == row["size_bytes"]
    names = {doc["file_name"]: doc for doc in story["documents"]}
    assert set(names) == {"PO-4711.pdf", "delivery-notes.txt"}
    pdf = names["PO-4711.pdf"]
    assert pdf["decision_json"]["reason"]
    assert pdf["storage_key"] in story["storage"]["documents"]
    # The hand-off to the downstream extraction job carries the trace_id.
    assert pdf["job"]["status"] == "queued"
    assert pdf["job"]["trace_id"] == row["trace_id"]
    assert {part["decision"] for part in story["parts"]} >= {"container", "body"}
    attachment_job = story["jobs"]["extract_attachments"]
    assert attachment_job["status"] == "finished"
    assert attachment_job["trace_id"] == row["trace_id"]
    assert attachment_job["result"]["status"] == "parsed"
    postfix = story["postfix"]
    assert postfix["in_queue"] is None  # delivered: gone from the queue
    log = "\n".join(postfix["maillog"]["lines"])
    assert f"{row['postfix_queue_id']}: message-id={row['source_message_id']}" in log
    assert "relay=orderflow" in log and "status=sent" in log


def test_every_identifier_leads_to_the_same_message(
    stack: Any, parsed_order: dict[str, Any]
) -> None:
    row = parsed_order["row"]
    bare_message_id = row["source_message_id"].strip("<>")
    for identifier in (
        row["id"],
        row["trace_id"],
        row["postfix_queue_id"],
        bare_message_id,
        parsed_order["documents"][0]["id"],
    ):
        code, stories = cli_json(stack, "show", identifier, "--no-postfix")
        assert code == 0, identifier
        assert [s["inbound_message"]["id"] for s in stories] == [row["id"]], identifier


def test_show_text_for_people(stack: Any, parsed_order: dict[str, Any]) -> None:
    row = parsed_order["row"]
    result = cli(stack, "trace", row["postfix_queue_id"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"inbound_message {row['id']}  PARSED")
    for expected in (
        "org          acme",
        f"trace_id     {row['trace_id']}",
        "history",
        "STORED  (+",
        "extract_attachments  finished",
        "'PO-4711.pdf' application/pdf",
        "extract_document job queued",
        f"postfix {row['postfix_queue_id']}: no longer in this host's queue",
        "status=sent",
    ):
        assert expected in out, expected


def test_a_message_to_two_orgs_is_two_stories(stack: Any, db: Any) -> None:
    msg = order_email()
    send_mail(stack, msg, [address("acme"), address("globex")])
    wait_status(db, msg["Message-ID"], ("STORED", "PARSED"), slug="acme")
    wait_status(db, msg["Message-ID"], ("STORED", "PARSED"), slug="globex")
    code, stories = cli_json(stack, "show", msg["Message-ID"], "--no-postfix")
    assert code == 0
    assert sorted(s["org"]["slug"] for s in stories) == ["acme", "globex"]
    code, stories = cli_json(stack, "show", msg["Message-ID"], "--org", "globex", "--no-postfix")
    assert [s["org"]["slug"] for s in stories] == ["globex"]
    # raw needs one message: it names the candidates instead of guessing.
    ambiguous = cli(stack, "raw", msg["Message-ID"])
    assert ambiguous.returncode == 1
    assert "matches 2 messages" in ambiguous.stderr and "(globex)" in ambiguous.stderr
    assert cli(stack, "raw", msg["Message-ID"], "--org", "globex").returncode == 0


def test_raw_streams_the_stored_message_byte_for_byte(
    stack: Any, parsed_order: dict[str, Any]
) -> None:
    row = parsed_order["row"]
    result = subprocess.run(
        [CLI, "raw", row["id"], "--config", str(stack.config_path)],
        capture_output=True,
        env=env_with(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == row["sha256"]
    assert len(result.stdout) == row["size_bytes"]
    assert row["source_message_id"].encode() in result.stdout
    # A document id gives that document's file.
    pdf_id = next(d["id"] for d in parsed_order["documents"] if d["file_name"] == "PO-4711.pdf")
    document = subprocess.run(
        [CLI, "raw", pdf_id, "--config", str(stack.config_path)],
        capture_output=True,
        env=env_with(),
        timeout=60,
    )
    assert document.returncode == 0
    assert document.stdout == minimal_pdf()


def test_unknown_identifiers_fail_clearly(stack: Any) -> None:
    for identifier in ("<nobody@nowhere.example>", "00000000-0000-0000-0000-000000000000"):
        result = cli(stack, "show", identifier)
        assert result.returncode == 1
        assert f"no message matches {identifier!r}" in result.stderr
        assert result.stdout == ""
    assert cli(stack, "raw", "ABCDEF123456").returncode == 1


def test_mail_held_by_postfix_is_shown_from_its_queue_and_log(stack: Any) -> None:
    """The delivery service is down: Postfix defers the message and no row exists yet."""
    msg = order_email()
    stack.stop_component("deliver")
    try:
        send_mail(stack, msg, [address("acme")])

        def deferred() -> list[dict[str, Any]]:
            return [e for e in stack.postqueue() if e["queue_name"] == "deferred"]

        (entry,) = wait_for(deferred, 30, "a deferred message")
        code, stories = cli_json(stack, "show", msg["Message-ID"])
        assert code == 0
        (story,) = stories
        assert story["in_database"] is False
        held = story["postfix"][entry["queue_id"]]
        assert held["in_queue"]["queue_name"] == "deferred"
        assert "delivery service unavailable" in held["in_queue"]["recipients"][0]["delay_reason"]
        text = cli(stack, "show", entry["queue_id"]).stdout
        assert "not in the database (yet)" in text
        assert f"postfix {entry['queue_id']}: in the deferred queue" in text
    finally:
        stack.start_component("deliver")
        stack.flush_queue()
        stack.wait_for_empty_queue(60)
