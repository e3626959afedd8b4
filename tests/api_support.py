"""Helpers of the API tests: the real `orderflow-ingest api` process on a free loopback port,
keys made with the real CLI, and messages delivered through the stack's Postfix."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from ops_support import CLI, cli, env_with

from orderflow_ingest.devstack.processes import free_ports

ALL_PERMISSIONS = (
    "messages:read",
    "raw:read",
    "events:read",
    "reprocess",
    "webhooks:manage",
    "keys:admin",
    "domains:manage",
)


@contextmanager
def api_server(
    stack: Any,
    settings: Callable[[int], dict[str, str]] | None = None,
    ready_path: str = "/v1/openapi.json",
) -> Iterator[str]:
    """Start the API as an operator would; yields its base URL; stops it afterwards.

    `settings(port)` gives extra ORDERFLOW_* values; `ready_path` answers 200 once it serves.
    """
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [CLI, "api", "--config", str(stack.config_path), "--listen", f"127.0.0.1:{port}"],
        env=env_with(settings(port) if settings else None),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"api exited {process.returncode}: {output[-2000:]}")
            try:
                if httpx.get(f"{base}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not answer within 60 s"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


def create_key(stack: Any, name: str, orgs: tuple[str, ...], permissions: tuple[str, ...]) -> str:
    args = ["key", "create", name]
    for org in orgs:
        args += ["--org", org]
    for permission in permissions:
        args += ["-p", permission]
    result = cli(stack, *args, "--json")
    assert result.returncode == 0, result.stderr
    secret = json.loads(result.stdout)["secret"]
    assert isinstance(secret, str)
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
