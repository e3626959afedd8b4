"""The demo's product half: an API key for one org, the stack's HTTP API, a signed raw
download, signed webhooks arriving at a local receiver that verifies them with
`standardwebhooks`, and a user of the web inbox with a sign-in link.

Everything goes through the commands a newcomer would type (`key create`, `webhook create`,
`webhook-dispatcher`, `user add`, `user link`). The API (and the inbox it serves) is a part
of the stack and keeps running; the dispatcher and the receiver run for the demo only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from orderflow_ingest.devstack.stack import Stack

# The dispatcher may reach this loopback receiver (the SSRF guard refuses loopback otherwise).
DEMO_WEBHOOK_ENV = {
    "ORDERFLOW_WEBHOOK_ALLOW": "127.0.0.1/32",
    "ORDERFLOW_WEBHOOK_REQUIRE_HTTPS": "false",
    "ORDERFLOW_WEBHOOK_POLL_INTERVAL": "0.5",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Receiver:
    """A loopback HTTP server that keeps every webhook whose signature verifies."""

    secret: str
    port: int = field(default_factory=_free_port)
    verified: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0

    def start(self) -> None:
        from standardwebhooks import Webhook

        verifier = Webhook(self.secret)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    event = verifier.verify(body, dict(self.headers.items()))
                except Exception:
                    receiver.rejected += 1
                    self.send_response(400)
                else:
                    event["webhook-id"] = self.headers["webhook-id"]
                    receiver.verified.append(event)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()


def _request(url: str, key: str | None = None) -> bytes:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        body: bytes = response.read()
        return body


@dataclass
class Product:
    stack: Stack
    key: str
    api_url: str
    receiver: Receiver
    processes: list[subprocess.Popen[bytes]]

    def get(self, path: str) -> Any:
        """GET an API path with the demo key; the decoded JSON."""
        return json.loads(_request(self.api_url + path, self.key))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the shell's ORDERFLOW_* settings (another stack's,
    say, which would win over the stack's env file), plus `extra`."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("ORDERFLOW_")}
    return {**clean, **(extra or {})}


def _run_cli(stack: Stack, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "orderflow_ingest.entry", *args, "--config", str(stack.config_path)],
        capture_output=True,
        text=True,
        env=_environ(env),
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"orderflow-ingest {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def _cli(stack: Stack, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_run_cli(stack, *args, env=env))
    return data


def _background(
    stack: Stack, log: Path, *args: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orderflow_ingest.entry",
                *args,
                "--config",
                str(stack.config_path),
            ],
            stdout=handle,
            stderr=handle,
            env=_environ(env),
        )


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def start(stack: Stack, slug: str, logs: Path) -> Product:
    """A key and a webhook endpoint for `slug`, the dispatcher and the receiver; the stack's
    API must be running (StackOptions.api)."""
    created = _cli(
        stack,
        "key", "create", "demo-erp", "--org", slug,
        "-p", "messages:read", "-p", "raw:read", "-p", "events:read", "--json",
    )  # fmt: skip
    receiver = Receiver(secret="")
    endpoint = _cli(
        stack,
        "webhook", "create", "--org", slug, f"http://127.0.0.1:{receiver.port}/hook", "--json",
        env=DEMO_WEBHOOK_ENV,
    )  # fmt: skip
    receiver.secret = endpoint["secret"]
    receiver.start()
    dispatcher = _background(
        stack, logs / "demo-webhook-dispatcher.log", "webhook-dispatcher", env=DEMO_WEBHOOK_ENV
    )
    product = Product(stack, created["secret"], stack.api_url, receiver, [dispatcher])
    try:
        _wait(lambda: product.get("/v1/messages?limit=1"), 60, f"the API on {stack.api_url}")
    except BaseException:
        product.stop()
        raise
    return product


def show(product: Product, row: dict[str, Any], heading: Callable[[str], None]) -> None:
    """List the org's messages, download the raw message by signed link, show the webhooks."""
    key_hint = product.key[:13] + "…"
    heading(f"HTTP API at {product.api_url} with key {key_hint} (org acme only)")
    listed = product.get("/v1/messages?limit=5")
    for item in listed["data"]:
        print(f"  {item['id']}  {item['status']:<7} {item['subject']!r}")
    link = product.get(f"/v1/messages/{row['id']}/raw")
    raw = _request(link["url"])
    digest = hashlib.sha256(raw).hexdigest()
    same = "equal to" if digest == row["sha256"] else "DIFFERENT from"
    print(
        f"signed link (expires {link.get('expires_at')}): {len(raw)} bytes, sha256 {same} the row's"
    )

    heading(f"webhooks verified by the receiver on 127.0.0.1:{product.receiver.port}")

    def arrived() -> list[dict[str, Any]]:
        mine = [
            event
            for event in product.receiver.verified
            if event.get("data", {}).get("inbound_message_id") == row["id"]
        ]
        return mine if any(e["type"] == "message.parsed" for e in mine) else []

    for event in _wait(arrived, 90, "the message.parsed webhook"):
        print(f"  verified {event['webhook-id']}: {event['type']}")
    if product.receiver.rejected:
        print(f"  {product.receiver.rejected} request(s) failed verification")


def sign_in_link(stack: Stack, email: str, slug: str) -> str:
    """Make `email` admin of `slug` (`user add`, idempotent) and return a fresh single-use
    sign-in link for the stack's inbox (`user link`)."""
    _cli(stack, "user", "add", email, "--org", f"{slug}:admin", "--name", "Demo", "--json")
    return _run_cli(stack, "user", "link", email).strip()
