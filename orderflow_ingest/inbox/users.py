"""Inbox users, their org memberships and roles (sql/008_inbox_users.sql), and the one step
that turns a user in an org into the API's keys.Principal: the inbox has no permission model
of its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orderflow_ingest import keys
from orderflow_ingest.db import Conn

ROLES = ("viewer", "operator", "admin")
# What each role may, in the API's permission names (keys.PERMISSIONS).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"messages:read", "raw:read", "events:read"}),
    "operator": frozenset({"messages:read", "raw:read", "events:read", "reprocess"}),
    "admin": frozenset(keys.PERMISSIONS),
}
USER_COLUMNS = (
    "u.id::text AS id, u.email::text AS email, u.name, u.platform_admin, u.created_at,"
    " u.disabled_at, u.last_sign_in_at"
)


class UserRequestError(ValueError):
    """A user request that cannot be honoured (unknown org or role, bad address)."""


def add_user(
    conn: Conn,
    email: str,
    name: str,
    memberships: Sequence[tuple[str, str]],
    platform_admin: bool = False,
) -> dict[str, Any]:
    """Create the user (or update name/flag and re-enable) and set each (org slug, role)."""
    email = email.strip()
    if "@" not in email.strip("@") or len(email) > 320 or any(c.isspace() for c in email):
        raise UserRequestError(f"{email!r} is not an email address")
    org_ids = []
    for slug, role in memberships:
        if role not in ROLES:
            raise UserRequestError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        org = conn.execute("SELECT id::text AS id FROM org WHERE slug = %s", (slug,)).fetchone()
        if org is None:
            raise UserRequestError(f"no org {slug}")
        org_ids.append((org["id"], role))
    row = conn.execute(
        "INSERT INTO inbox_user (email, name, platform_admin) VALUES (%s, %s, %s)"
        " ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name,"
        " platform_admin = EXCLUDED.platform_admin, disabled_at = NULL"
        " RETURNING id::text AS id",
        (email, name, platform_admin),
    ).fetchone()
    assert row is not None
    for org_id, role in org_ids:
        conn.execute(
            "INSERT INTO inbox_membership (user_id, org_id, role) VALUES (%s, %s, %s)"
            " ON CONFLICT (user_id, org_id) DO UPDATE SET role = EXCLUDED.role",
            (row["id"], org_id, role),
        )
    user = get_user(conn, row["id"])
    assert user is not None
    return user


def get_user(conn: Conn, user_id: str) -> dict[str, Any] | None:
    user = conn.execute(
        f"SELECT {USER_COLUMNS} FROM inbox_user u WHERE u.id = %s", (user_id,)
    ).fetchone()
    if user is not None:
        user["orgs"] = memberships(conn, user)
    return user


def list_users(conn: Conn) -> list[dict[str, Any]]:
    users = conn.execute(f"SELECT {USER_COLUMNS} FROM inbox_user u ORDER BY u.email").fetchall()
    for user in users:
        user["orgs"] = memberships(conn, user)
    return users


def disable_user(conn: Conn, email: str) -> dict[str, Any] | None:
    """Disable (idempotent) and end the user's sessions; None when there is no such user."""
    row = conn.execute(
        "UPDATE inbox_user SET disabled_at = coalesce(disabled_at, now()) WHERE email = %s"
        " RETURNING id::text AS id",
        (email,),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE inbox_session SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL",
        (row["id"],),
    )
    return get_user(conn, row["id"])


def memberships(conn: Conn, user: dict[str, Any]) -> list[dict[str, Any]]:
    """The user's orgs (slug, name, role), active ones only; a platform admin is admin of all."""
    if user["platform_admin"]:
        return conn.execute(
            "SELECT id::text AS org_id, slug::text AS slug, name, 'admin' AS role FROM org"
            " WHERE status = 'active' ORDER BY slug"
        ).fetchall()
    return conn.execute(
        "SELECT o.id::text AS org_id, o.slug::text AS slug, o.name, mb.role"
        " FROM inbox_membership mb JOIN org o ON o.id = mb.org_id"
        " WHERE mb.user_id = %s AND o.status = 'active' ORDER BY o.slug",
        (user["id"],),
    ).fetchall()


def principal_in(user: dict[str, Any], slug: str) -> tuple[keys.Principal, dict[str, Any]] | None:
    """The Principal the user acts as in org `slug` (that one org, the role's permissions),
    and the membership; None when the user is not a member (the caller answers 404)."""
    for membership in user["orgs"]:
        if membership["slug"] == slug.lower():
            principal = keys.Principal(
                key_id=f"user {user['id']}",
                name=user["email"],
                org_ids=(membership["org_id"],),
                permissions=ROLE_PERMISSIONS[membership["role"]],
            )
            return principal, membership
    return None
