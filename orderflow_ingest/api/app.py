"""The FastAPI application: backends opened once per process, problem+json errors, /v1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from orderflow_ingest import db, storage
from orderflow_ingest.api import problems, routes
from orderflow_ingest.api.context import Backends
from orderflow_ingest.job_queue import make_redis
from orderflow_ingest.settings import Settings

TITLE = "orderflow-ingest API"
VERSION = "1.0.0"
DESCRIPTION = (
    "Read what arrived by email, download raw messages and documents through short-lived "
    "signed links, reprocess, and follow the event feed. Authenticate with "
    "`Authorization: Bearer ofi_live_...`; every object outside the key's orgs is a 404. "
    "Errors are application/problem+json. See docs/api.md."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; with settings None (the OpenAPI export) no backend is opened."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings is None:
            yield
            return
        pool = db.make_pool(settings, max_size=8, name="api")
        pool.open(wait=True, timeout=settings.backend_timeout)
        s3 = storage.make_client(settings)
        redis = make_redis(settings)
        app.state.backends = Backends(settings=settings, pool=pool, s3=s3, redis=redis)
        try:
            yield
        finally:
            pool.close()
            redis.close()
            s3.close()

    app = FastAPI(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    problems.install(app)
    app.include_router(routes.router)
    _mount_webhooks(app)
    from orderflow_ingest.api import domain_routes

    app.include_router(domain_routes.router)
    # The web inbox (README "Web inbox"): same process, same keys.Principal model, /inbox.
    from orderflow_ingest.inbox.mount import install as install_inbox

    install_inbox(app)
    return app


def _mount_webhooks(app: FastAPI) -> None:
    """Webhook endpoint routes, when the webhooks package provides them."""
    import importlib

    try:
        module = importlib.import_module("orderflow_ingest.api.webhook_routes")
    except ImportError:
        return
    app.include_router(module.router)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, as served (docs/openapi.json is this, committed)."""
    return create_app(None).openapi()
