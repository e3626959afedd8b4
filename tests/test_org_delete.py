"""`org delete` (issue 16, "Data lifecycle"): the dry run, refusing while mail is in flight,
the purge of everything the org had, the tombstone, and `--force`.

Real mail through the session stack's Postfix; each test deletes an org of its own.
"""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from lifecycle_support import deliver, extract, keys_of, new_org, parsed, present
from ops_support import cli, cli_json
from samples import address, order_email
from support_wait import wait_for

pytestmark = pytest.mark.stack


def _org(db: Any, org_id: str) -> dict[str, Any]:
    row = db.execute(
        "SELECT status, deleted_at, slug::text AS slug FROM org WHERE id = %s", (org_id,)
    ).fetchone()
    assert row is not None
    return dict(row)


def _messages(db: Any, org_id: str) -> int:
    row = db.execute("SELECT count(*) AS n FROM inbound_message WHERE org_id = %s", (org_id,))
    return int(row.fetchone()["n"])


def _refused_or_bounced(stack: Any, send_mail: Any, recipient: str) -> None:
    """550 at RCPT with the milter in the path; without it the delivery bounces the message
    (the org is not active), which the maillog shows."""
    msg = order_email(to=recipient)
    try:
        send_mail(stack, msg, [recipient], mail_from="")
    except smtplib.SMTPRecipientsRefused:
        return

    def bounced() -> bool:
        lines = stack.maillog_path.read_text(errors="replace").splitlines()
        ids = {
            line.split(": ")[1].split(":")[0]
            for line in lines
            if msg["Message-ID"] in line and "message-id=" in line
        }
        return any("status=bounced" in line for line in lines if any(q in line for q in ids))

    wait_for(bounced, 60, f"mail to {recipient} to bounce")


def test_org_delete_dry_run_reports_what_would_go_and_changes_nothing(
    stack: Any, db: Any, s3: Any, send_mail: Any
) -> None:
    org = new_org(stack, "del-dry")
    messages = [parsed(stack, db, send_mail, org["slug"]) for _ in range(2)]
    document_bytes = db.execute(
        "SELECT coalesce(sum(size_bytes), 0) AS n FROM document WHERE org_id = %s", (org["id"],)
    ).fetchone()["n"]
    code, planned = cli_json(stack, "org", "delete", org["slug"], "--dry-run")
    assert code == 0
    assert planned["dry_run"] is True and planned["deleted"] is False
    assert planned["messages"] == 2 and planned["documents"] == 4 and planned["objects"] == 6
    assert planned["bytes"] == sum(m["size_bytes"] for m in messages) + document_bytes
    text = cli(stack, "org", "delete", org["slug"], "--dry-run")
    assert text.returncode == 0 and "would delete 2 messages, 4 documents, 6 objects" in text.stdout
    assert _org(db, org["id"])["status"] == "active"
    assert _messages(db, org["id"]) == 2
    for message in messages:
        assert all(present(s3, stack.settings.s3_bucket, key) for key in keys_of(db, message))


def test_org_delete_refuses_while_mail_is_in_flight_then_purges_everything_and_tombstones(
    stack: Any, db: Any, s3: Any, send_mail: Any
) -> None:
    bucket = stack.settings.s3_bucket
    org = new_org(stack, "del")
    done = parsed(stack, db, send_mail, org["slug"])
    in_flight = deliver(stack, db, send_mail, org["slug"])  # STORED: extraction pending
    code, created = cli_json(
        stack, "key", "create", "del-key", "--org", org["slug"], "-p", "raw:read"
    )
    assert code == 0

    refused = cli(stack, "org", "delete", org["slug"])
    assert refused.returncode == 1
    assert "1 of its messages are still being delivered or extracted" in refused.stderr
    # Refused, but disabled (what becomes of mail to a disabled org is the delivery's business).
    assert _org(db, org["id"]) == {"status": "disabled", "deleted_at": None, "slug": org["slug"]}
    assert _messages(db, org["id"]) == 2

    extract(stack, in_flight)  # the extraction finishes: nothing is in flight any more
    keys = keys_of(db, done) + keys_of(
        db,
        db.execute(
            "SELECT id::text AS id, raw_storage_key FROM inbound_message WHERE id = %s",
            (in_flight["id"],),
        ).fetchone(),
    )
    code, deleted = cli_json(stack, "org", "delete", org["slug"])
    assert code == 0 and deleted["deleted"] is True
    assert deleted["messages"] == 2 and deleted["objects"] == len(keys) == 6
    assert _messages(db, org["id"]) == 0
    assert (
        db.execute("SELECT count(*) AS n FROM document WHERE org_id = %s", (org["id"],)).fetchone()[
            "n"
        ]
        == 0
    )
    assert not any(present(s3, bucket, key) for key in keys)
    tombstone = _org(db, org["id"])
    assert tombstone["status"] == "disabled" and tombstone["deleted_at"] is not None
    (event,) = db.execute(
        "SELECT data FROM event WHERE type = 'org.deleted' AND org_id = %s", (org["id"],)
    ).fetchall()
    assert event["data"]["messages"] == 2 and event["data"]["forced"] is False
    purged = db.execute(
        "SELECT count(*) AS n FROM event WHERE type = 'message.purged' AND org_id = %s",
        (org["id"],),
    ).fetchone()["n"]
    assert purged == 2
    key = db.execute("SELECT revoked_at FROM api_key WHERE id = %s", (created["id"],)).fetchone()
    assert key["revoked_at"] is not None
    # A tombstone is never enabled again, and its slug is not handed out again.
    assert cli(stack, "org", "enable", org["slug"]).returncode != 0
    code, listed = cli_json(stack, "org", "list")
    assert code == 0
    assert [o["status"] for o in listed if o["slug"] == org["slug"]] == ["deleted"]
    assert cli(stack, "org", "add", org["slug"]).returncode != 0
    assert cli(stack, "org", "delete", org["slug"]).returncode == 1
    # Mail to a deleted org is refused like mail to an unknown one: no row, no object.
    _refused_or_bounced(stack, send_mail, address(org["slug"]))
    assert _messages(db, org["id"]) == 0


def test_org_delete_force_tombstones_with_mail_in_flight_and_purge_finishes_it(
    stack: Any, db: Any, s3: Any, send_mail: Any
) -> None:
    org = new_org(stack, "del-force")
    in_flight = deliver(stack, db, send_mail, org["slug"])
    code, deleted = cli_json(stack, "org", "delete", org["slug"], "--force")
    assert code == 0 and deleted["deleted"] is True and deleted["in_flight"] == 1
    assert deleted["messages"] == 0
    assert _org(db, org["id"])["deleted_at"] is not None
    (event,) = db.execute(
        "SELECT data FROM event WHERE type = 'org.deleted' AND org_id = %s", (org["id"],)
    ).fetchall()
    assert event["data"]["forced"] is True and event["data"]["in_flight"] == 1
    # The in-flight message ends; a deleted org's terminal messages always expire.
    extract(stack, in_flight)
    code, done = cli_json(stack, "purge", "--org", org["slug"])
    assert code == 0 and done["messages"] == 1
    assert _messages(db, org["id"]) == 0
    assert not present(s3, stack.settings.s3_bucket, in_flight["raw_storage_key"])
