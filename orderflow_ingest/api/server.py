"""Run the API under uvicorn on ORDERFLOW_API_LISTEN (loopback unless explicitly allowed:
settings.py refuses anything else at load)."""

from __future__ import annotations

import uvicorn

from orderflow_ingest.api.app import create_app
from orderflow_ingest.settings import Settings


def serve(settings: Settings, listen: str | None = None) -> None:
    host, _, port = (listen or settings.api_listen).rpartition(":")
    uvicorn.run(
        create_app(settings),
        host=host.strip("[]"),
        port=int(port),
        log_level="warning",
        access_log=False,
        # A reverse proxy on this host (docs/api.md) passes the client address in
        # X-Forwarded-For; only loopback peers are trusted to set it (key IP allow-lists).
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1,::1",
        server_header=False,
    )
