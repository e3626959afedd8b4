"""Helpers of the operator-tooling tests: run the real `orderflow-ingest` CLI against the
session stack, run an RQ worker in burst mode, wait for rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from samples import order_email
from support_wait import wait_for

CLI = str(Path(sys.prefix) / "bin" / "orderflow-ingest")


def env_with(overrides: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORDERFLOW_")}
    env.update(overrides or {})
    return env


def cli(
    stack: Any,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`orderflow-ingest ARGS --config <stack env file>`, as an operator runs it."""
    return subprocess.run(
        [CLI, *args, "--config", str(stack.config_path)],
        capture_output=True,
        text=True,
        env=env_with(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def cli_json(stack: Any, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    result = cli(stack, *args, "--json", env=env)
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"not JSON (exit {result.returncode}): {result.stdout!r} {result.stderr!r}"
        ) from None


def run_worker(stack: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`orderflow-ingest worker --burst`: run every queued attachment job, then exit."""
    result = cli(stack, "worker", "--burst", "--without-scheduler", env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def message_row(db: Any, message_id: str, slug: str = "acme") -> dict[str, Any] | None:
    return db.execute(
        "SELECT m.*, m.id::text AS id, m.org_id::text AS org_id FROM inbound_message m"
        " JOIN org o ON o.id = m.org_id WHERE m.source_message_id = %s AND o.slug = %s",
        (message_id, slug),
    ).fetchone()


def wait_status(
    db: Any, message_id: str, statuses: tuple[str, ...], slug: str = "acme", timeout: float = 60
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        row = message_row(db, message_id, slug)
        return row if row is not None and row["status"] in statuses else None

    return wait_for(check, timeout, f"{message_id} in {statuses}")


def documents_of(db: Any, inbound_message_id: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT id::text AS id, part_path, file_name, status FROM document"
        " WHERE inbound_message_id = %s ORDER BY part_path",
        (inbound_message_id,),
    ).fetchall()


def relayed_order(hops: int = 14) -> EmailMessage:
    """An order that crossed many relays: a header block of a few KB, as forwarded mail from
    large corporate gateways has (Received, ARC and X- trace headers)."""
    msg = order_email()
    for hop in range(hops):
        msg["Received"] = (
            f"from gw{hop}.relay.customer.example (gw{hop}.relay.customer.example [192.0.2.{hop}])"
            f" by mx{hop}.relay.customer.example (Postfix) with ESMTPS id 4Q{hop:02d}XyZ"
            " for <orders+acme@orderflow.test>; Tue, 7 May 2024 10:14:00 +0200"
        )
    return msg
