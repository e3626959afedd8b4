"""Mount the inbox into the API's FastAPI app: routes under /inbox, its static files, the
security-header middleware, and HTML (not problem+json) answers for its errors."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from orderflow_ingest.inbox import pages, pages_admin, pages_domains, pages_webhooks
from orderflow_ingest.inbox.web import PREFIX, PageError, SignInRequired, security_headers

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    app.middleware("http")(security_headers)

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> Response:
        return pages.render(request, "error.html", exc.status, message=exc.message)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(f"{PREFIX}/signin", status_code=303)

    app.include_router(pages.router)
    app.include_router(pages_webhooks.router)
    app.include_router(pages_domains.router)
    app.include_router(pages_admin.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="inbox-static")
