"""The custom-domain page for org admins: the API's own domain route functions
(api/domain_routes.py), called with the user's Principal in the org of the URL, so the
permission (domains:manage), the org scoping (another org's domain answers 404), the checks of a
new name and the DNS check of verify-now are the API's, which are the CLI's, unchanged."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from orderflow_ingest import keys
from orderflow_ingest.api import domain_routes
from orderflow_ingest.api.context import BackendsDep, DbConn
from orderflow_ingest.inbox.pages import User, _api_call, _uuid, admin_of, render
from orderflow_ingest.inbox.web import PREFIX, PageError, check_csrf

router = APIRouter(prefix=PREFIX, include_in_schema=False)
PERMISSION = domain_routes.PERMISSION
# (css class of the badge, words) per state; the classes are the stylesheet's status colours.
STATES = {
    "pending": ("stored", "pending: waiting for the TXT and MX records"),
    "verified": ("parsed", "verified: receiving"),
    "mx_lost": ("received", "MX lost: senders are told to retry (451)"),
    "suspended": ("failed", "suspended: mail refused (550)"),
}
DONE = {
    "remove": "Domain removed: mail to it is refused from now on.",
}


def _admin(user: dict[str, Any], slug: str) -> tuple[keys.Principal, dict[str, Any]]:
    return admin_of(user, slug, PERMISSION, "manage its domains")


def _page(
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    user: dict[str, Any],
    slug: str,
    status: int = 200,
    **extra: Any,
) -> HTMLResponse:
    principal, org = _admin(user, slug)
    listed = _api_call(domain_routes.list_domains, principal, conn, backends)["data"]
    for domain in listed:
        domain["badge"] = STATES.get(domain["state"], ("", domain["state"]))
    return render(request, "domains.html", status, user=user, org=org, domains=listed, **extra)


@router.get("/o/{slug}/domains")
def domains_page(
    slug: str,
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
    done: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    return _page(request, conn, backends, user, slug, done=DONE.get(done or ""))


@router.post("/o/{slug}/domains")
def add_domain(
    slug: str,
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
    domain: Annotated[str, Form(max_length=300)] = "",
    local_parts: Annotated[str, Form(max_length=2000)] = "",
    accept_all: Annotated[str, Form(max_length=10)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Register a domain of this org through the API's create; the page shows what to publish."""
    check_csrf(user["csrf"], csrf)
    principal, org = _admin(user, slug)
    parts = [item.strip() for item in local_parts.replace("\n", ",").split(",") if item.strip()]
    form = {"domain": domain.strip(), "local_parts": local_parts, "accept_all": bool(accept_all)}
    try:
        body = domain_routes.NewDomain(
            org_id=org["org_id"],
            domain=domain.strip(),
            local_parts=parts,
            accept_all=bool(accept_all),
        )
        created = _api_call(domain_routes.add_domain, body, principal, conn, backends)
    except ValidationError:
        error = "A domain needs a name (at most 255 characters) and at most 100 local parts."
        return _page(request, conn, backends, user, slug, 400, error=error, form=form)
    except PageError as problem:
        if problem.status not in (409, 422):
            raise
        error = f"Refused: {problem.message}."
        return _page(request, conn, backends, user, slug, 400, error=error, form=form)
    return _page(request, conn, backends, user, slug, created=created)


@router.post("/o/{slug}/domains/{domain_id}/verify")
def verify_domain(
    slug: str,
    domain_id: str,
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Check the domain's DNS now (the API's verify) and show the result on the list."""
    check_csrf(user["csrf"], csrf)
    principal, _ = _admin(user, slug)
    checked = _api_call(domain_routes.verify_domain, _uuid(domain_id), principal, conn, backends)
    return _page(request, conn, backends, user, slug, checked=checked)


@router.post("/o/{slug}/domains/{domain_id}/remove")
def remove_domain(
    slug: str,
    domain_id: str,
    conn: DbConn,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    principal, org = _admin(user, slug)
    _api_call(domain_routes.remove_domain, _uuid(domain_id), principal, conn)
    return RedirectResponse(f"{PREFIX}/o/{org['slug']}/domains?done=remove", status_code=303)
