"""Custom-domain queries, all in one place (sql/009_custom_domains.sql).

State changes go through `apply_check` only: the row is locked, the new state and streaks are
written and the transition's event is recorded in the same transaction, and the UPDATE names
the state it read, so a transition is written (and its event sent) exactly once however many
hosts check at the same time.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from orderflow_ingest import events
from orderflow_ingest.db import Conn
from orderflow_ingest.domains.policy import CheckResult, DomainState, Policy, Step, step

DOMAIN_PATTERN = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
# Local parts an operator may list: dot-atoms without a +extension (the delimiter).
LOCAL_PART_PATTERN = re.compile(r"^[a-z0-9!#$%&'*/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*/=?^_`{|}~-]+)*$")

COLUMNS = """
  d.id::text AS id, d.org_id::text AS org_id, o.slug::text AS org_slug, d.domain,
  d.txt_token, d.accept_all, d.local_parts, d.state, d.pass_streak, d.mx_fail_streak,
  d.txt_fail_streak, d.last_checked_at, d.last_result, d.last_conclusive_at, d.mx_lost_since,
  d.verified_at, d.state_changed_at, d.created_at
"""
FROM = "custom_domain d JOIN org o ON o.id = d.org_id"
LIVE = "d.removed_at IS NULL"


class DomainError(ValueError):
    """A domain or local part that cannot be added (the message says why)."""


class DomainTaken(DomainError):
    """The domain is registered already (live, for this org or another)."""


def normalise_domain(domain: str) -> str:
    name = domain.strip().rstrip(".").lower()
    if len(name) > 253 or not DOMAIN_PATTERN.fullmatch(name):
        raise DomainError(f"{domain!r} is not a domain name (letters, digits, hyphens, dots)")
    return name


def normalise_local_parts(local_parts: list[str]) -> list[str]:
    clean: list[str] = []
    for part in local_parts:
        value = part.strip().lower()
        if "+" in value or not LOCAL_PART_PATTERN.fullmatch(value) or len(value) > 64:
            raise DomainError(f"{part!r} is not a local part we can accept (no '+', max 64)")
        if value not in clean:
            clean.append(value)
    return clean


def new_token() -> str:
    return secrets.token_urlsafe(24)


def add_domain(
    conn: Conn, org_id: str, domain: str, accept_all: bool, local_parts: list[str]
) -> dict[str, Any]:
    name = normalise_domain(domain)
    parts = normalise_local_parts(local_parts)
    if not accept_all and not parts:
        raise DomainError("name the accepted local parts (--local-part orders) or --accept-all")
    row = conn.execute(
        "INSERT INTO custom_domain (org_id, domain, txt_token, accept_all, local_parts)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (domain) WHERE removed_at IS NULL"
        " DO NOTHING RETURNING id::text AS id",
        (org_id, name, new_token(), accept_all, parts),
    ).fetchone()
    if row is None:
        raise DomainTaken(f"domain {name} is already registered")
    found = get_domain(conn, name)
    assert found is not None
    return found


def get_domain(conn: Conn, domain: str) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {COLUMNS} FROM {FROM} WHERE {LIVE} AND d.domain = %s",
        (domain.rstrip(".").lower(),),
    ).fetchone()


def get_domain_by_id(
    conn: Conn, domain_id: object, org_ids: Sequence[str]
) -> dict[str, Any] | None:
    """One live domain by id, only within `org_ids` (another org's id is None, like none)."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM {FROM} WHERE {LIVE} AND d.id = %s AND d.org_id = ANY(%s::uuid[])",
        (str(domain_id), list(org_ids)),
    ).fetchone()


def list_domains(
    conn: Conn, org_slug: str | None = None, org_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    if org_ids is not None:
        return conn.execute(
            f"SELECT {COLUMNS} FROM {FROM} WHERE {LIVE} AND d.org_id = ANY(%s::uuid[])"
            " ORDER BY d.domain",
            (list(org_ids),),
        ).fetchall()
    if org_slug:
        return conn.execute(
            f"SELECT {COLUMNS} FROM {FROM} WHERE {LIVE} AND o.slug = %s ORDER BY d.domain",
            (org_slug,),
        ).fetchall()
    return conn.execute(f"SELECT {COLUMNS} FROM {FROM} WHERE {LIVE} ORDER BY d.domain").fetchall()


def remove_domain(conn: Conn, domain: str, org_ids: Sequence[str] | None = None) -> bool:
    """Forget a live domain (the row stays, with removed_at); with `org_ids`, only theirs."""
    if org_ids is None:
        row = conn.execute(
            "UPDATE custom_domain SET removed_at = now()"
            " WHERE domain = %s AND removed_at IS NULL RETURNING id",
            (domain.rstrip(".").lower(),),
        ).fetchone()
    else:
        row = conn.execute(
            "UPDATE custom_domain SET removed_at = now()"
            " WHERE domain = %s AND removed_at IS NULL AND org_id = ANY(%s::uuid[]) RETURNING id",
            (domain.rstrip(".").lower(), list(org_ids)),
        ).fetchone()
    return row is not None


def counts_by_state(conn: Conn) -> dict[str, int]:
    rows = conn.execute(
        "SELECT state, count(*) AS n FROM custom_domain WHERE removed_at IS NULL GROUP BY state"
    ).fetchall()
    return {row["state"]: int(row["n"]) for row in rows}


def rcpt_lookup(conn: Conn, domain: str) -> dict[str, Any] | None:
    """What the milter needs at RCPT for a domain that is not an ingest domain: the live
    row, else the last removed one with state 'removed' (an smtpd process may still hold
    the domain as a relay domain from before its removal: the milter refuses it then)."""
    return conn.execute(
        "SELECT CASE WHEN d.removed_at IS NULL THEN d.state ELSE 'removed' END AS state,"
        " d.accept_all, d.local_parts, o.slug::text AS org_slug,"
        " CASE WHEN o.deleted_at IS NULL THEN o.status ELSE 'deleted' END AS org_status"
        f" FROM {FROM} WHERE d.domain = %s ORDER BY d.removed_at DESC NULLS FIRST LIMIT 1",
        (domain.rstrip(".").lower(),),
    ).fetchone()


def accepts(row: dict[str, Any], local_part: str) -> bool:
    """Whether the domain row accepts `local_part` (its +extension ignored, any case)."""
    base = local_part.split("+", 1)[0].lower()
    return bool(row["accept_all"]) or base in (row["local_parts"] or [])


def org_slug_for_recipient(conn: Conn, domain: str) -> str | None:
    """The delivery service's resolution: the org that owns (or last owned) the domain.

    No state or local-part test here: the milter's RCPT check is the gate, and mail Postfix
    queued while it passed must not bounce because the domain lost its MX, its local-part list
    changed or it was removed since (an accepted order is never bounced for our own change).
    Only a domain that was verified once counts: a pending one is a relay domain for Postfix
    (sql/012), so mail Postfix makes itself (a bounce to a sender there) would otherwise be
    stored for whichever org merely typed the domain in.
    """
    row = conn.execute(
        f"SELECT o.slug::text AS org_slug FROM {FROM}"
        " WHERE d.domain = %s AND d.verified_at IS NOT NULL"
        " ORDER BY d.removed_at DESC NULLS FIRST LIMIT 1",
        (domain.rstrip(".").lower(),),
    ).fetchone()
    return None if row is None else str(row["org_slug"])


def _state_of(row: dict[str, Any]) -> DomainState:
    return DomainState(
        state=row["state"],
        pass_streak=row["pass_streak"],
        mx_fail_streak=row["mx_fail_streak"],
        txt_fail_streak=row["txt_fail_streak"],
        mx_lost_since=row["mx_lost_since"],
        verified_at=row["verified_at"],
    )


def claim_due(conn: Conn, older_than: datetime, limit: int) -> list[dict[str, Any]]:
    """Rows not checked since `older_than`, locked for this transaction; rows another host has
    locked are skipped (FOR UPDATE SKIP LOCKED), so every host may run the check at once."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM custom_domain d JOIN org o ON o.id = d.org_id"
        " WHERE d.removed_at IS NULL"
        " AND (d.last_checked_at IS NULL OR d.last_checked_at < %s)"
        " ORDER BY d.last_checked_at NULLS FIRST LIMIT %s FOR UPDATE OF d SKIP LOCKED",
        (older_than, limit),
    ).fetchall()


def lock_domain(conn: Conn, domain: str) -> dict[str, Any] | None:
    """One row locked for this transaction (`domain verify`); waits for another host's check."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM {FROM} WHERE {LIVE} AND d.domain = %s FOR UPDATE OF d",
        (domain.rstrip(".").lower(),),
    ).fetchone()


def apply_check(
    conn: Conn, row: dict[str, Any], result: CheckResult, now: datetime, policy: Policy
) -> Step:
    """Write one check result for a row locked by this transaction; the caller commits."""
    outcome = step(_state_of(row), result, now, policy)
    after = outcome.after
    record = {"txt": result.txt.value, "mx": result.mx.value, "detail": result.detail}
    updated = conn.execute(
        "UPDATE custom_domain SET state = %s, pass_streak = %s, mx_fail_streak = %s,"
        " txt_fail_streak = %s, mx_lost_since = %s, verified_at = %s, last_checked_at = %s,"
        " last_result = %s,"
        " last_conclusive_at = CASE WHEN %s THEN %s ELSE last_conclusive_at END,"
        " state_changed_at = CASE WHEN state <> %s THEN %s ELSE state_changed_at END"
        " WHERE id = %s AND state = %s AND removed_at IS NULL RETURNING id",
        (
            after.state,
            after.pass_streak,
            after.mx_fail_streak,
            after.txt_fail_streak,
            after.mx_lost_since,
            after.verified_at,
            now,
            Jsonb(record),
            result.conclusive,
            now,
            after.state,
            now,
            row["id"],
            row["state"],
        ),
    ).fetchone()
    if updated is None:  # removed, or changed by someone who did not lock it: nothing written
        return type(outcome)(outcome.before, outcome.before, None)
    if outcome.event:
        events.record(
            conn,
            outcome.event,
            org_id=row["org_id"],
            data={
                "domain": row["domain"],
                "from": outcome.before.state,
                "to": after.state,
                "txt": result.txt.value,
                "mx": result.mx.value,
            },
        )
    return outcome
