"""`org disable` keeps the mail Postfix already queued for the org (issue 16, "Outages longer
than the queue"): stored and held FAILED (reason org_disabled), never bounced, and brought
back by `org enable` + `reprocess`. Only an org that does not exist (never, or deleted) is 67.

Through the session stack's real Postfix (no milter, so nothing refuses the RCPT: exactly the
situation of mail queued before the org was disabled) → pipe client → delivery service.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from ops_support import cli, documents_of, run_worker
from samples import address, order_email
from support_wait import wait_for
from test_ingest_e2e import hand_to_delivery_service

from orderflow_ingest.job_queue import attachment_job_id

pytestmark = pytest.mark.stack

SENDER = "buyer@customer.example"


def _new_org(stack: Any) -> str:
    slug = f"held-{uuid.uuid4().hex[:10]}"
    result = cli(stack, "org", "add", slug)
    assert result.returncode == 0, result.stderr
    return slug


def _row(db: Any, message_id: str) -> dict[str, Any] | None:
    return db.execute(
        "SELECT id::text AS id, status, error_json, raw_storage_key, postfix_queue_id"
        " FROM inbound_message WHERE message_id = %s",
        (message_id,),
    ).fetchone()


def _status_lines(stack: Any, queue_id: str) -> list[str]:
    return [
        line
        for line in stack.maillog_path.read_text(errors="replace").splitlines()
        if f" {queue_id}: " in line and "status=" in line
    ]


def test_mail_queued_for_a_disabled_org_is_stored_and_held_not_bounced(
    stack: Any, db: Any, redis_conn: Any, s3: Any, send_mail: Any
) -> None:
    slug = _new_org(stack)
    disabled = cli(stack, "org", "disable", slug)
    assert disabled.returncode == 0, disabled.stderr

    message = order_email(
        to=address(slug), attachments=[("PO-held.pdf", "application/pdf", b"%PDF-1.4 held\n")]
    )
    message_id = message["Message-ID"]
    assert send_mail(stack, message, [address(slug)]) == {}
    row = wait_for(
        lambda: r if (r := _row(db, message_id)) and r["status"] == "FAILED" else None,
        90,
        "the held row",
    )
    assert row["error_json"]["reason"] == "org_disabled"
    assert f"org enable {slug}" in row["error_json"]["detail"]
    # Kept: the raw is in S3; nothing was handed to the workers.
    raw = s3.get_object(Bucket=stack.settings.s3_bucket, Key=row["raw_storage_key"])
    assert message_id.encode() in raw["Body"].read()
    assert not redis_conn.exists(f"rq:job:{attachment_job_id(row['id'])}")

    # Postfix saw exit 0: delivered, nothing bounced to the (possibly forged) sender.
    stack.wait_for_empty_queue(60)
    lines = wait_for(
        lambda: _status_lines(stack, row["postfix_queue_id"]) or None, 30, "its maillog status"
    )
    assert all("status=sent" in line for line in lines), lines
    maillog = stack.maillog_path.read_text(errors="replace")
    assert f"{row['postfix_queue_id']}: sender non-delivery notification" not in maillog

    # A second copy (a sender's retry) is a duplicate of the held row, not a second row.
    assert send_mail(stack, message, [address(slug)]) == {}
    stack.wait_for_empty_queue(60)
    assert (
        db.execute(
            "SELECT count(*) AS n FROM inbound_message WHERE message_id = %s", (message_id,)
        ).fetchone()["n"]
        == 1
    )

    # The operator brings it back.
    assert cli(stack, "org", "enable", slug).returncode == 0
    again = cli(stack, "reprocess", "--org", slug, "--status", "FAILED")
    assert again.returncode == 0, again.stdout + again.stderr
    run_worker(stack)
    assert _row(db, message_id)["status"] == "PARSED"  # type: ignore[index]
    assert [d["file_name"] for d in documents_of(db, row["id"])] == ["PO-held.pdf"]


def test_org_disable_help_says_queued_mail_is_kept(stack: Any) -> None:
    result = cli(stack, "org", "disable", "--help")
    text = " ".join(result.stdout.split())
    assert "not bounced" in text and "org_disabled" in text
    assert "reprocess --org SLUG --status FAILED" in text


def test_an_org_that_never_existed_still_bounces_67(stack: Any, db: Any) -> None:
    slug = f"never-{uuid.uuid4().hex[:10]}"
    message = order_email(to=address(slug))
    assert hand_to_delivery_service(stack, message.as_bytes(), SENDER, address(slug)) == 67
    assert _row(db, message["Message-ID"]) is None


def test_a_deleted_org_bounces_67(stack: Any, db: Any) -> None:
    """`org delete` removed the org and its data: there is nobody to keep mail for."""
    slug = _new_org(stack)
    deleted = cli(stack, "org", "delete", slug, "--force")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    message = order_email(to=address(slug))
    assert hand_to_delivery_service(stack, message.as_bytes(), SENDER, address(slug)) == 67
    assert _row(db, message["Message-ID"]) is None
