"""`key create|list|revoke` and `events list|prune` as an operator runs them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from ops_support import cli, cli_json

from orderflow_ingest import keys

pytestmark = pytest.mark.stack


def test_key_create_shows_the_secret_once_and_stores_only_its_hash(stack: Any, db: Any) -> None:
    code, created = cli_json(stack, "key", "create", "cli-key", "--org", "acme", "-p", "raw:read")
    assert code == 0
    secret = created["secret"]
    assert keys.well_formed(secret)
    row = db.execute(
        "SELECT secret_sha256, hint FROM api_key WHERE id = %s", (created["id"],)
    ).fetchone()
    assert row["secret_sha256"] == keys.secret_hash(secret)
    assert secret not in json.dumps(row)
    code, listed = cli_json(stack, "key", "list")
    assert code == 0
    (mine,) = [key for key in listed if key["id"] == created["id"]]
    assert "secret" not in mine and secret not in json.dumps(listed)
    assert mine["permissions"] == ["raw:read"]


def test_key_create_refuses_unknown_orgs_and_permissions(stack: Any) -> None:
    unknown_org = cli(stack, "key", "create", "x", "--org", "no-such-org", "-p", "raw:read")
    assert unknown_org.returncode != 0 and "no org no-such-org" in unknown_org.stderr
    bad_permission = cli(stack, "key", "create", "x", "--org", "acme", "-p", "everything")
    assert bad_permission.returncode == 2 and "unknown permission" in bad_permission.stderr
    no_org = cli(stack, "key", "create", "x", "-p", "raw:read")
    assert no_org.returncode != 0


def test_key_revoke_takes_effect_and_is_idempotent(stack: Any, db: Any) -> None:
    code, created = cli_json(stack, "key", "create", "short", "--org", "acme", "-p", "raw:read")
    assert code == 0
    for _ in range(2):
        code, revoked = cli_json(stack, "key", "revoke", created["id"])
        assert code == 0 and revoked["revoked_at"]
    assert keys.authenticate(db, created["secret"], "127.0.0.1") is None
    assert cli(stack, "key", "revoke", str(uuid.uuid4())).returncode == 1


def test_an_expired_or_ip_restricted_key_is_refused(stack: Any, db: Any) -> None:
    code, created = cli_json(
        stack,
        "key",
        "create",
        "lan",
        "--org",
        "acme",
        "-p",
        "raw:read",
        "--allow-ip",
        "10.1.0.0/16",
    )
    assert code == 0
    assert keys.authenticate(db, created["secret"], "10.1.2.3") is not None
    assert keys.authenticate(db, created["secret"], "127.0.0.1") is None
    code, expired = cli_json(
        stack, "key", "create", "old", "--org", "acme", "-p", "raw:read", "--expires-in-days", "0"
    )
    assert code == 0
    assert keys.authenticate(db, expired["secret"], "127.0.0.1") is None


def test_events_list_pages_with_the_printed_cursor(stack: Any, db: Any) -> None:
    slug = "events-cli-test"
    db.execute(
        "INSERT INTO org (slug, name) VALUES (%s, %s) ON CONFLICT (slug) DO NOTHING", (slug, slug)
    )
    org_id = db.execute("SELECT id FROM org WHERE slug = %s", (slug,)).fetchone()["id"]
    marker = uuid.uuid4().hex
    for kind in ("test.first", "test.second"):
        db.execute(
            "INSERT INTO event (type, org_id, trace_id) VALUES (%s, %s, %s)",
            (kind, org_id, marker),
        )
    seen: list[str] = []
    cursor: list[str] = []
    while True:
        code, page = cli_json(stack, "events", "list", "--org", slug, "--limit", "1", *cursor)
        assert code == 0
        if not page["data"]:
            assert cursor == ["--after", page["next_cursor"]]  # no new events: same cursor
            break
        seen.extend(e["type"] for e in page["data"] if e["trace_id"] == marker)
        cursor = ["--after", page["next_cursor"]]
    assert seen == ["test.first", "test.second"]
    bad = cli(stack, "events", "list", "--after", "garbage!")
    assert bad.returncode == 2 and "cursor" in bad.stderr


def test_events_prune_runs_as_the_runtime_role(stack: Any) -> None:
    result = cli(stack, "events", "prune")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pruned ") and "older than 30 days" in result.stdout
    assert cli(stack, "events", "prune", "--days", "0").returncode == 2


def test_a_key_of_a_deleted_org_opens_nothing(stack: Any, db: Any, settings: Any) -> None:
    import psycopg

    slug = f"gone-{uuid.uuid4().hex[:8]}"
    db.execute("INSERT INTO org (slug, name) VALUES (%s, %s)", (slug, slug))
    code, created = cli_json(stack, "key", "create", "k", "--org", slug, "-p", "raw:read")
    assert code == 0
    assert keys.authenticate(db, created["secret"], "127.0.0.1") is not None
    with psycopg.connect(settings.migrate_url, autocommit=True) as owner:
        owner.execute(
            "UPDATE org SET status = 'disabled', deleted_at = now() WHERE slug = %s", (slug,)
        )
    assert keys.authenticate(db, created["secret"], "127.0.0.1") is None
