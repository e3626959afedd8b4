"""API keys: the secret's format, and the api_key rows (sql/005_api_keys.sql).

Format, after GitHub's tokens: ``ofi_live_`` + 32 random base62 characters + the CRC32 of
those, 6 base62 characters. The prefix lets secret scanners recognise a leaked key, and the
checksum lets them (and us, before any database look-up) tell a real key from a typo. Only the
sha256 of the whole secret is stored; the secret is shown once, when the key is created.

A key names concrete orgs and permissions; there is no "all orgs" key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orderflow_ingest.db import Conn

PREFIX = "ofi_live_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
SECRET_PATTERN = re.compile(rf"^{PREFIX}([0-9A-Za-z]{{{RANDOM_LENGTH}}})([0-9A-Za-z]{{6}})$")
PERMISSIONS = (
    "messages:read",
    "raw:read",
    "events:read",
    "reprocess",
    "webhooks:manage",
    "keys:admin",
    "domains:manage",
)
KEY_COLUMNS = """
  id::text AS id, name, hint, org_ids::text[] AS org_ids, permissions,
  allowed_ips::text[] AS allowed_ips, expires_at, created_by, created_at, revoked_at, last_used_at
"""


class KeyRequestError(ValueError):
    """A key request that cannot be honoured (unknown org, unknown permission, ...)."""


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate_secret() -> str:
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return PREFIX + random_part + checksum(random_part)


def well_formed(secret: str) -> bool:
    """Prefix, length, alphabet and checksum right: worth a database look-up."""
    match = SECRET_PATTERN.match(secret)
    if match is None:
        return False
    return secrets.compare_digest(checksum(match.group(1)), match.group(2))


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, orgs and permissions, for one request."""

    key_id: str
    name: str
    org_ids: tuple[str, ...]
    permissions: frozenset[str]

    def may(self, permission: str) -> bool:
        return permission in self.permissions


def _normalise_ips(allowed_ips: Iterable[str] | None) -> list[str] | None:
    if allowed_ips is None:
        return None
    networks = []
    for item in allowed_ips:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise KeyRequestError(f"{item!r} is not an IP address or network") from None
    return networks or None


def create_key(
    conn: Conn,
    *,
    name: str,
    org_ids: Sequence[str],
    permissions: Sequence[str],
    created_by: str,
    expires_at: datetime | None = None,
    allowed_ips: Iterable[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Insert a key (caller commits); returns (row, secret). The secret is not kept."""
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        raise KeyRequestError(f"unknown permission {unknown[0]} (known: {', '.join(PERMISSIONS)})")
    if not permissions:
        raise KeyRequestError("a key needs at least one permission")
    if not org_ids:
        raise KeyRequestError("a key needs at least one org")
    wanted = sorted(set(org_ids))
    found = conn.execute(
        "SELECT id::text AS id FROM org WHERE id = ANY(%s::uuid[])", (wanted,)
    ).fetchall()
    missing = sorted(set(wanted) - {row["id"] for row in found})
    if missing:
        raise KeyRequestError(f"no org {missing[0]}")
    secret = generate_secret()
    row = conn.execute(
        f"INSERT INTO api_key (name, secret_sha256, hint, org_ids, permissions, allowed_ips,"
        f" expires_at, created_by) VALUES (%s, %s, %s, %s::uuid[], %s, %s::cidr[], %s, %s)"
        f" RETURNING {KEY_COLUMNS}",
        (
            name,
            secret_hash(secret),
            secret[: len(PREFIX) + 4],
            wanted,
            sorted(set(permissions)),
            _normalise_ips(allowed_ips),
            expires_at,
            created_by,
        ),
    ).fetchone()
    assert row is not None
    return row, secret


def list_keys(conn: Conn, within_orgs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Keys, newest first; `within_orgs` keeps only keys whose orgs all lie within it."""
    if within_orgs is None:
        return conn.execute(
            f"SELECT {KEY_COLUMNS} FROM api_key ORDER BY created_at DESC"
        ).fetchall()
    return conn.execute(
        f"SELECT {KEY_COLUMNS} FROM api_key WHERE org_ids <@ %s::uuid[] ORDER BY created_at DESC",
        (list(within_orgs),),
    ).fetchall()


def get_key(
    conn: Conn, key_id: str, within_orgs: Sequence[str] | None = None
) -> dict[str, Any] | None:
    if within_orgs is None:
        return conn.execute(
            f"SELECT {KEY_COLUMNS} FROM api_key WHERE id = %s", (key_id,)
        ).fetchone()
    return conn.execute(
        f"SELECT {KEY_COLUMNS} FROM api_key WHERE id = %s AND org_ids <@ %s::uuid[]",
        (key_id, list(within_orgs)),
    ).fetchone()


def revoke_key(
    conn: Conn, key_id: str, within_orgs: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """Revoke (idempotent); None when no such key (within those orgs)."""
    if get_key(conn, key_id, within_orgs) is None:
        return None
    return conn.execute(
        f"UPDATE api_key SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s"
        f" RETURNING {KEY_COLUMNS}",
        (key_id,),
    ).fetchone()


def authenticate(conn: Conn, secret: str, client_ip: str | None) -> Principal | None:
    """The key behind `secret` if it is live and allowed from `client_ip`; else None.

    Every refusal looks the same to the caller (no hint whether the key exists).
    """
    if not well_formed(secret):
        return None
    # Only orgs that still exist count: a deleted org's tombstone (sql/007) scopes nothing.
    row = conn.execute(
        "SELECT k.id::text AS id, k.name, k.permissions, k.allowed_ips::text[] AS allowed_ips,"
        " ARRAY(SELECT o.id::text FROM org o WHERE o.id = ANY(k.org_ids)"
        "       AND o.deleted_at IS NULL ORDER BY o.id) AS org_ids"
        " FROM api_key k WHERE k.secret_sha256 = %s AND k.revoked_at IS NULL"
        " AND (k.expires_at IS NULL OR k.expires_at > now())",
        (secret_hash(secret),),
    ).fetchone()
    if row is None or not row["org_ids"]:
        return None
    if row["allowed_ips"] is not None:
        try:
            address = ipaddress.ip_address(client_ip or "")
        except ValueError:
            return None
        if not any(address in ipaddress.ip_network(net) for net in row["allowed_ips"]):
            return None
    conn.execute(
        "UPDATE api_key SET last_used_at = now() WHERE id = %s"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (row["id"],),
    )
    return Principal(
        key_id=row["id"],
        name=row["name"],
        org_ids=tuple(row["org_ids"]),
        permissions=frozenset(row["permissions"]),
    )
