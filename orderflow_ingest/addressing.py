"""Plus-addressing: which org an envelope recipient names (orders+<slug>@<domain>).

Pure logic shared by the milter (at RCPT) and the delivery service (at delivery time).
"""

from __future__ import annotations

import re

# Org slugs are what an operator can type and a customer can read: lower-case letters, digits
# and inner hyphens, at most 63 characters. Anything else in the extension is not an org.
SLUG_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def split_address(address: str) -> tuple[str, str] | None:
    """Split ``local@domain`` (angle brackets allowed) into its parts, or None if malformed."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.rstrip(".").lower()


# RFC 5321 §4.5.1 and RFC 2142: mailboxes every mail domain must accept. Postfix routes them
# to the operator (postfix-config/role_mailboxes); they name no org.
ROLE_MAILBOXES = ("postmaster", "abuse")


def is_role_mailbox(address: str) -> bool:
    """postmaster@ or abuse@ (any case, any domain)."""
    parts = split_address(address)
    return parts is not None and parts[0].lower() in ROLE_MAILBOXES


def is_our_domain(address: str, domains: tuple[str, ...]) -> bool:
    parts = split_address(address)
    return parts is not None and parts[1] in domains


def org_slug(address: str, local_part: str, domains: tuple[str, ...]) -> str | None:
    """The org slug an ingest address names, or None (no plus part, other domain, bad slug).

    Local part and slug compare case-insensitively, as customers type them in any case.
    """
    parts = split_address(address)
    if parts is None:
        return None
    local, domain = parts
    if domain not in domains:
        return None
    base, plus, extension = local.partition("+")
    if not plus or base.lower() != local_part.lower():
        return None
    slug = extension.lower()
    return slug if SLUG_PATTERN.fullmatch(slug) else None


def custom_domain_parts(address: str, domains: tuple[str, ...]) -> tuple[str, str] | None:
    """(local part, domain) of an address at a domain that is not an ingest domain: a custom
    domain (orderflow_ingest/domains) when the database says so; None for ingest domains."""
    parts = split_address(address)
    if parts is None or parts[1] in domains:
        return None
    return parts
