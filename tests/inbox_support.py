"""Helpers of the web inbox tests: a local SMTP sink standing in for the inbox's own relay
(ORDERFLOW_INBOX_SMTP_URL), the real `orderflow-ingest api` process with the inbox settings,
and a world of parsed orders in two orgs with users of each role."""

from __future__ import annotations

import email
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from api_support import api_server
from ops_support import cli

from orderflow_ingest.devstack.processes import free_ports

LINK = re.compile(r"(https?://\S+/inbox/signin/link/[A-Za-z0-9_-]+)")
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
TOKEN_FIELD = re.compile(r'name="token" value="([^"]+)"')


@dataclass
class SmtpSink:
    """Every message the relay was handed, as parsed email objects, with a wait."""

    port: int = 0
    messages: list[Message] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.changed:
            self.messages.append(email.message_from_bytes(envelope.content))
            self.changed.notify_all()
        return "250 OK"

    def for_address(self, address: str) -> list[Message]:
        with self.changed:
            return [m for m in self.messages if m["To"] == address]

    def wait_link(self, address: str, seen: int, timeout: float = 30) -> str:
        """The link in the (seen+1)-th message to `address`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.for_address(address)) <= seen:
                left = deadline - time.monotonic()
                assert left > 0, f"no sign-in mail to {address} within {timeout}s"
                self.changed.wait(left)
            body = self.for_address(address)[seen].get_payload(decode=True)
        match = LINK.search(body.decode())
        assert match is not None, body
        return match.group(1)


@contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    (sink.port,) = free_ports(1)
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def inbox_env(port: int, sink: SmtpSink) -> dict[str, str]:
    return {
        "ORDERFLOW_INBOX_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
        "ORDERFLOW_INBOX_PUBLIC_URL": f"http://127.0.0.1:{port}/inbox",
        "ORDERFLOW_INBOX_COOKIE_SECURE": "false",
        "ORDERFLOW_INBOX_MAIL_FROM": "inbox@orderflow.test",
    }


# Webhook endpoints on loopback for the webhook pages' tests (tests/webhook_receiver.py); every
# other address keeps the SSRF policy of webhooks/ssrf.py.
WEBHOOKS_ON_LOOPBACK = {
    "ORDERFLOW_WEBHOOK_ALLOW": "127.0.0.1/32",
    "ORDERFLOW_WEBHOOK_REQUIRE_HTTPS": "false",
}


@contextmanager
def inbox_server(stack: Any, sink: SmtpSink, extra: dict[str, str] | None = None) -> Iterator[str]:
    """`orderflow-ingest api` (the API and the inbox, one process); yields its base URL."""
    with api_server(
        stack, lambda port: {**inbox_env(port, sink), **(extra or {})}, "/inbox/signin"
    ) as base:
        yield base


def add_user(stack: Any, address: str, *orgs: str) -> None:
    args = ["user", "add", address]
    for org in orgs:
        args += ["--org", org]
    result = cli(stack, *args)
    assert result.returncode == 0, result.stderr


def clear_rate_limits(redis_url: str) -> None:
    """Tests share 127.0.0.1: forget its sign-in counts so each test starts from zero."""
    from redis import Redis

    client = Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter("ofi:inbox:signin:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def form_field(pattern: re.Pattern[str], html: str) -> str:
    match = pattern.search(html)
    assert match is not None, html[:2000]
    return match.group(1)


def sign_in(http: httpx.Client, sink: SmtpSink, address: str, redis_url: str) -> None:
    """Sign `http` in as a person would: ask for a link, open it, press the button."""
    clear_rate_limits(redis_url)
    seen = len(sink.for_address(address))
    page = http.get("/inbox/signin")
    response = http.post(
        "/inbox/signin", data={"email": address, "csrf": form_field(CSRF_FIELD, page.text)}
    )
    assert response.status_code == 200, response.text
    link = sink.wait_link(address, seen)
    confirm = http.get(httpx.URL(link).raw_path.decode())
    assert confirm.status_code == 200
    done = http.post(
        "/inbox/signin/link",
        data={
            "token": form_field(TOKEN_FIELD, confirm.text),
            "csrf": form_field(CSRF_FIELD, confirm.text),
        },
    )
    assert done.status_code == 303, done.text
