"""One webhook attempt: POST to an address the SSRF guard vetted, within a hard time budget.

Built on http.client so nothing between the check and the connection resolves the name again
(no DNS rebinding) and nothing follows redirects (a 3xx is a failed attempt, as the Standard
Webhooks spec advises). A watchdog shuts the socket when the total budget is spent, so a
receiver trickling its answer byte by byte cannot hold a dispatcher thread; at most
RESPONSE_EXCERPT_BYTES of the body are read.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from orderflow_ingest.webhooks.ssrf import Target

RESPONSE_EXCERPT_BYTES = 1024
USER_AGENT = "orderflow-ingest-webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    status: int | None  # HTTP status, None when no response arrived
    seconds: float
    excerpt: str  # at most RESPONSE_EXCERPT_BYTES of the response body, decoded leniently
    error: str | None  # why no response arrived (connect refused, timeout, TLS, ...)
    retry_after: str | None
    address: str | None  # the address connected to

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to one given address whatever the host name says."""

    def __init__(self, address: str, port: int, timeout: float, connect_timeout: float):
        super().__init__(address, port, timeout=timeout)
        self._address = address
        self._connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection(
            (self._address, self.port), timeout=self._connect_timeout
        )
        self.sock.settimeout(self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """TLS to the vetted address, with SNI and certificate checks for the URL's host name."""

    def __init__(self, address: str, port: int, host: str, timeout: float, connect_timeout: float):
        super().__init__(address, port, timeout, connect_timeout)
        self._server_name = host
        self._context = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


def post(
    target: Target,
    headers: dict[str, str],
    body: bytes,
    connect_timeout: float,
    total_timeout: float,
) -> AttemptResult:
    """POST `body` to the first vetted address that accepts a connection."""
    started = time.monotonic()
    last_error = "no address"
    for address in target.addresses:
        remaining = total_timeout - (time.monotonic() - started)
        if remaining <= 0:
            break
        result = _post_once(
            target, address, headers, body, min(connect_timeout, remaining), remaining, started
        )
        if result.status is not None or not _is_connect_error(result.error):
            return result
        last_error = result.error or last_error
    return AttemptResult(None, time.monotonic() - started, "", last_error, None, None)


def _is_connect_error(error: str | None) -> bool:
    return bool(error) and str(error).startswith("connect:")


def _post_once(
    target: Target,
    address: str,
    headers: dict[str, str],
    body: bytes,
    connect_timeout: float,
    budget: float,
    started: float,
) -> AttemptResult:
    conn: _PinnedHTTPConnection
    if target.scheme == "https":
        conn = _PinnedHTTPSConnection(address, target.port, target.host, budget, connect_timeout)
    else:
        conn = _PinnedHTTPConnection(address, target.port, budget, connect_timeout)
    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(budget, watchdog)
    timer.daemon = True
    timer.start()
    try:
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as error:
            return _failure(started, address, "connect: " + _describe(error, expired))
        try:
            conn.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", target.host_header)
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            excerpt = response.read(RESPONSE_EXCERPT_BYTES)
            return AttemptResult(
                response.status,
                time.monotonic() - started,
                excerpt.decode("utf-8", "replace"),
                None,
                response.getheader("Retry-After"),
                address,
            )
        except (OSError, http.client.HTTPException, ssl.SSLError) as error:
            return _failure(started, address, _describe(error, expired))
    finally:
        timer.cancel()
        conn.close()


def _failure(started: float, address: str, error: str) -> AttemptResult:
    return AttemptResult(None, time.monotonic() - started, "", error[:300], None, address)


def _describe(error: BaseException, expired: threading.Event) -> str:
    if expired.is_set() or isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(error).__name__}: {error}"
