"""Secrets and signatures of the Standard Webhooks scheme (symmetric, `v1`).

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the header carries one
`v1,<base64 HMAC-SHA256>` per secret, space separated, so a receiver can rotate secrets
without downtime. Secrets are shown to users as `whsec_<base64 of 32 random bytes>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# Neither part may contain a "." (the spec warns: it would make the signed content ambiguous).
WEBHOOK_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def generate_secret() -> str:
    """A new signing secret (at least 24 bytes, as the spec requires; we use 32)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a signing secret starts with whsec_")
    key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    if len(key) < 24:
        raise ValueError("a signing secret holds at least 24 bytes")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 signature>` of one attempt."""
    if not WEBHOOK_ID.match(webhook_id):
        raise ValueError("webhook-id may hold only letters, digits, _ and -")
    content = f"{webhook_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    active_secrets: list[str], webhook_id: str, timestamp: int, body: bytes
) -> str:
    """The `webhook-signature` value: one signature per active secret (current first)."""
    if not active_secrets:
        raise ValueError("an endpoint needs a secret to sign with")
    return " ".join(sign(secret, webhook_id, timestamp, body) for secret in active_secrets)
