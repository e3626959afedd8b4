"""`show` during a PostgreSQL outage: the mail waits in Postfix's queue, and the operator
still learns where it is (the database cannot be asked, Postfix can)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import send_mail
from ops_support import cli, cli_json, wait_for
from samples import address, order_email

pytestmark = pytest.mark.stack


def test_show_tells_what_postfix_holds_while_postgresql_is_down(stack: Any) -> None:
    msg = order_email()
    stack.stop_component("postgres")
    try:
        send_mail(stack, msg, [address("acme")])

        def deferred() -> list[dict[str, Any]]:
            return [e for e in stack.postqueue() if e["queue_name"] == "deferred"]

        (entry,) = wait_for(deferred, 60, "a deferred message")
        code, stories = cli_json(stack, "show", msg["Message-ID"])
        assert code == 0
        (story,) = stories
        assert story["in_database"] is False
        assert story["database_error"].startswith("PostgreSQL unreachable")
        # Retried every few seconds on the dev stack: deferred, or active for a moment.
        held = story["postfix"][entry["queue_id"]]["in_queue"]["queue_name"]
        assert held in ("deferred", "active")

        by_queue_id = cli(stack, "show", entry["queue_id"])
        assert by_queue_id.returncode == 0, by_queue_id.stderr
        assert re.search(
            f"postfix {entry['queue_id']}: in the (deferred|active) queue", by_queue_id.stdout
        )
        assert "PostgreSQL unreachable" in by_queue_id.stderr

        unknown = cli(stack, "show", "<nobody@nowhere.example>")
        assert unknown.returncode == 75
        assert "Postfix knows nothing" in unknown.stderr
        assert "Traceback" not in unknown.stderr
    finally:
        stack.start_component("postgres")
        stack.flush_queue()
        stack.wait_for_empty_queue(90)
