"""Magic-link sign-in and sessions.

A request for a link does the same work whatever the address: one look-up, one random token,
one row (user_id NULL for an unknown address, a row that can never sign in), and the email is
handed to a background thread only after the answer is sent. So the page's text and timing do
not tell whether an address has an account. The token is 32 random bytes, only its sha256 is
stored, it expires after ORDERFLOW_INBOX_LINK_TTL (at most 15 minutes) and is used once. The
session cookie likewise holds a random id whose sha256 is the session's key; the CSRF token of
every form is bound to the session.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from orderflow_ingest.db import Conn

# Used/expired links and ended/expired sessions are pruned this long after they ended.
PRUNE_AFTER = timedelta(days=1)
# Requests for a link, per window, per address and per client address (Redis counters).
WINDOW_SECONDS = 900
PER_ADDRESS = 5
PER_CLIENT = 30


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def normalise_email(email: str) -> str:
    return email.strip().lower()[:320]


def rate_limited(redis: Any, email: str, client_ip: str) -> bool:
    """Count this request against the address and the client; True when either is over."""
    over = False
    for key, limit in (
        (f"ofi:inbox:signin:addr:{digest(normalise_email(email))}", PER_ADDRESS),
        (f"ofi:inbox:signin:ip:{client_ip}", PER_CLIENT),
    ):
        pipe = redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS, nx=True)
        count, _ = pipe.execute()
        over = over or int(count) > limit
    return over


@dataclass(frozen=True)
class LinkRequest:
    """What a sign-in request produced: the token, and the address to mail it to (None for
    an unknown or disabled address: nothing is sent)."""

    token: str
    send_to: str | None


def request_link(conn: Conn, email: str, ttl_seconds: int) -> LinkRequest:
    """Record a token for `email` (caller commits); the same statements either way."""
    user = conn.execute(
        "SELECT id::text AS id, email::text AS email FROM inbox_user"
        " WHERE email = %s AND disabled_at IS NULL",
        (normalise_email(email),),
    ).fetchone()
    token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO inbox_login_token (token_sha256, user_id, expires_at)"
        " VALUES (%s, %s, now() + make_interval(secs => %s))",
        (digest(token), user["id"] if user else None, ttl_seconds),
    )
    return LinkRequest(token, user["email"] if user else None)


def link_url(settings: Any, token: str) -> str:
    """The link to mail: from ORDERFLOW_INBOX_PUBLIC_URL, never from a request's Host."""
    base = str(settings.inbox_public_url).rstrip("/") or f"http://{settings.api_listen}/inbox"
    return f"{base}/signin/link/{token}"


def token_is_live(conn: Conn, token: str) -> bool:
    """For the confirm page (GET): whether the link can still sign in. Uses nothing up."""
    row = conn.execute(
        "SELECT 1 FROM inbox_login_token t JOIN inbox_user u ON u.id = t.user_id"
        " WHERE t.token_sha256 = %s AND t.used_at IS NULL AND t.expires_at > now()"
        " AND u.disabled_at IS NULL",
        (digest(token),),
    ).fetchone()
    return row is not None


def redeem(conn: Conn, token: str, session_hours: int) -> tuple[str, str] | None:
    """Use the token up and open a session (caller commits): (session id, user id), or None
    when the token is unknown, used, expired or its user disabled."""
    row = conn.execute(
        "UPDATE inbox_login_token t SET used_at = now() FROM inbox_user u"
        " WHERE t.token_sha256 = %s AND t.used_at IS NULL AND t.expires_at > now()"
        " AND u.id = t.user_id AND u.disabled_at IS NULL RETURNING u.id::text AS user_id",
        (digest(token),),
    ).fetchone()
    if row is None:
        return None
    session_id = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO inbox_session (id_sha256, user_id, csrf_token, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(hours => %s))",
        (digest(session_id), row["user_id"], secrets.token_urlsafe(32), session_hours),
    )
    conn.execute("UPDATE inbox_user SET last_sign_in_at = now() WHERE id = %s", (row["user_id"],))
    return session_id, row["user_id"]


def session(conn: Conn, session_id: str) -> dict[str, Any] | None:
    """The live session behind a cookie value: user_id and csrf_token; None otherwise."""
    if not session_id or len(session_id) > 100:
        return None
    return conn.execute(
        "SELECT s.user_id::text AS user_id, s.csrf_token FROM inbox_session s"
        " JOIN inbox_user u ON u.id = s.user_id WHERE s.id_sha256 = %s"
        " AND s.revoked_at IS NULL AND s.expires_at > now() AND u.disabled_at IS NULL",
        (digest(session_id),),
    ).fetchone()


def end_session(conn: Conn, session_id: str) -> None:
    conn.execute(
        "UPDATE inbox_session SET revoked_at = now() WHERE id_sha256 = %s AND revoked_at IS NULL",
        (digest(session_id),),
    )


def prune(conn: Conn, keep: timedelta = PRUNE_AFTER) -> dict[str, int]:
    """Delete sign-in links used or expired, and sessions ended or expired, more than `keep`
    ago (through orderflow_prune_inbox_signin: the runtime role cannot delete them itself);
    the caller commits. Returns how many of each went. Neither can ever sign anyone in again:
    a link is looked up by the hash of its token, a session by the hash of its cookie."""
    row = conn.execute("SELECT * FROM orderflow_prune_inbox_signin(%s)", (keep,)).fetchone()
    assert row is not None
    return {"tokens": int(row["tokens"]), "sessions": int(row["sessions"])}
