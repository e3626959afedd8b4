"""Short-lived signed download links: our own HMAC-signed token, served by the API.

Why not S3 presigned URLs: the object store is internal (Ceph RGW on the backend network) and
should stay so; the API streams the object itself. A token names what it opens (kind, object
id, org) and when it expires; it is signed with a random key kept in the database
(api_link_key), so every API host accepts every other's links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from orderflow_ingest.db import Conn

KINDS = ("raw", "document")
MAX_TTL = 600


@dataclass(frozen=True)
class Grant:
    kind: str
    object_id: str
    org_id: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def link_key(conn: Conn) -> bytes:
    row = conn.execute("SELECT secret FROM api_link_key").fetchone()
    if row is None:
        raise RuntimeError("api_link_key is empty: run `orderflow-ingest db migrate`")
    return bytes(row["secret"])


def sign(key: bytes, grant: Grant) -> str:
    payload = f"{grant.kind}.{grant.object_id}.{grant.org_id}.{grant.expires}".encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(key: bytes, token: str, now: float | None = None) -> Grant | None:
    """The grant a token carries, or None if forged, malformed or expired."""
    try:
        payload_text, mac_text = token.split(".")
        payload = _unb64(payload_text)
        mac = _unb64(mac_text)
    except ValueError:
        return None
    if not hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), mac):
        return None
    try:
        kind, object_id, org_id, expires_text = payload.decode("ascii").split(".")
        expires = int(expires_text)
    except (UnicodeDecodeError, ValueError):
        return None
    current = time.time() if now is None else now
    if kind not in KINDS or not current < expires <= current + MAX_TTL:
        return None
    return Grant(kind, object_id, org_id, expires)
