"""What every inbox response shares: security headers with a per-request CSP nonce, CSRF
tokens, the session cookie's attributes, and the error/redirect exceptions pages raise."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response

PREFIX = "/inbox"
SESSION_COOKIE = "ofi_inbox_session"
# Double-submit token for the forms shown before there is a session (sign-in, confirm).
CSRF_COOKIE = "ofi_inbox_csrf"


class PageError(Exception):
    """An error page: 404 for anything outside the user's orgs, 403, 400, 429."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class SignInRequired(Exception):
    """No live session: the handler redirects to the sign-in page."""


def csp(nonce: str) -> str:
    return (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; "
        # connect-src: the inbox's poll for new mail (static/live.js) asks its own origin.
        "style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


async def security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Middleware: a nonce for the page to use, and the headers on every /inbox response."""
    if not request.url.path.startswith(PREFIX):
        return await call_next(request)
    request.state.csp_nonce = secrets.token_urlsafe(16)
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = csp(request.state.csp_nonce)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    return response


def pre_session_csrf(request: Request) -> str:
    """The double-submit token: the cookie's value, or a new one (set_csrf_cookie sends it)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    return current if 20 <= len(current) <= 100 else secrets.token_urlsafe(32)


def set_csrf_cookie(response: Response, token: str, secure: bool) -> None:
    response.set_cookie(
        CSRF_COOKIE, token, httponly=True, samesite="lax", secure=secure, path=PREFIX
    )


def check_csrf(expected: str | None, submitted: Any) -> None:
    """403 unless the form's token equals the expected one (session-bound or cookie)."""
    if (
        not expected
        or not isinstance(submitted, str)
        or not secrets.compare_digest(expected.encode(), submitted.encode())
    ):
        raise PageError(403, "This form has expired or did not come from this site. Reload it.")


def set_session_cookie(response: Response, session_id: str, secure: bool, hours: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=hours * 3600,
        httponly=True,
        samesite="lax",
        secure=secure,
        path=PREFIX,
    )
