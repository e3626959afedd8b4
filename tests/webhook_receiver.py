"""A real HTTP webhook receiver on loopback for the webhook tests.

It records every request (headers, raw body, arrival time) and answers from a script: a list
of (status, headers) consumed one per request, then a default. `hold` makes it sit on requests
(timeouts); `down()`/`up()` close and reopen its port (a receiver that is away).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    path: str

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, default_status: int = 200, port: int = 0):
        self.default_status = default_status
        self.script: list[tuple[int, dict[str, str]]] = []
        self.requests: list[Received] = []
        self.delay = 0.0
        # After this many requests, stop answering (hold) until the test sets `hold` again.
        self.hold_after: int | None = None
        self.hold = threading.Event()  # set = answer; clear = sit on requests
        self.hold.set()
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                            self.path,
                        )
                    )
                    status, headers = (
                        receiver.script.pop(0) if receiver.script else (receiver.default_status, {})
                    )
                    if (
                        receiver.hold_after is not None
                        and len(receiver.requests) >= receiver.hold_after
                    ):
                        receiver.hold.clear()
                receiver.hold.wait(60)
                if receiver.delay:
                    time.sleep(receiver.delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    reply = b"ok" if 200 <= status < 300 else b"no " * 1000
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up (timeout) or was killed: nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        server.daemon_threads = True
        self._port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.hold.set()
        self.down()

    def ids(self) -> list[str]:
        with self._lock:
            return [request.webhook_id for request in self.requests]

    def for_id(self, webhook_id: str) -> list[Received]:
        with self._lock:
            return [request for request in self.requests if request.webhook_id == webhook_id]
