"""The platform-admin view across orgs (/inbox/admin): for users with the platform-admin flag
only; anyone else gets the same 404 as a page that does not exist. Its queries live in
admin_queries.py; the links lead into each org's own inbox, where a platform admin acts as
that org's admin Principal like everywhere else."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from orderflow_ingest.api.context import DbConn
from orderflow_ingest.inbox import admin_queries
from orderflow_ingest.inbox.pages import User, render
from orderflow_ingest.inbox.web import PREFIX, PageError

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/admin")
def admin_page(request: Request, conn: DbConn, user: User) -> Response:
    if not user["platform_admin"]:
        raise PageError(404, "No such page.")
    return render(request, "admin.html", user=user, orgs=admin_queries.org_overview(conn))
