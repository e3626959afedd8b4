"""Webhook pages for org admins: the API's own webhook route functions (api/webhook_routes.py),
called with the user's Principal in the org of the URL, so the permission (webhooks:manage),
the org scoping (another org's endpoint or delivery answers 404) and the SSRF vetting of a new
URL (webhooks/ssrf.py, through the API's create) are the API's, unchanged. The API has no
route for disable/enable; those call the same scoped functions the CLI does
(webhooks/endpoints.py, with the Principal's orgs; enable vets the URL again)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from orderflow_ingest import keys
from orderflow_ingest.api import webhook_routes
from orderflow_ingest.api.context import BackendsDep, DbConn
from orderflow_ingest.inbox.pages import User, _api_call, _uuid, admin_of, render
from orderflow_ingest.inbox.web import PREFIX, PageError, check_csrf
from orderflow_ingest.webhooks import endpoints

router = APIRouter(prefix=PREFIX, include_in_schema=False)
PERMISSION = "webhooks:manage"
RECENT_DELIVERIES = 50
DONE = {
    "disable": "Endpoint disabled: nothing is sent to it until it is enabled again.",
    "enable": "Endpoint enabled: new events are delivered again.",
    "redeliver": "Delivery queued again: same body, same webhook-id, a fresh retry schedule.",
}


def _admin(user: dict[str, Any], slug: str) -> tuple[keys.Principal, dict[str, Any]]:
    return admin_of(user, slug, PERMISSION, "manage its webhooks")


def health(endpoint: dict[str, Any], last: dict[str, Any] | None) -> tuple[str, str]:
    """(css class, words) for an endpoint: disabled, failing, or how its last delivery went."""
    if not endpoint["enabled"]:
        return "failed", f"disabled: {endpoint['disabled_reason'] or 'by the org'}"
    if endpoint["failing_since"] is not None:
        return "received", f"failing since {endpoint['failing_since']:%Y-%m-%d %H:%M} UTC"
    if last is None:
        return "stored", "no deliveries yet"
    if last["status"] == "delivered":
        return "parsed", "healthy: last delivery succeeded"
    return "received", f"last delivery {last['status']}"


def _endpoints_page(
    request: Request, conn: DbConn, user: dict[str, Any], slug: str, status: int = 200, **extra: Any
) -> HTMLResponse:
    principal, org = _admin(user, slug)
    listed = _api_call(webhook_routes.list_endpoints, principal, conn)["data"]
    for endpoint in listed:
        recent = _api_call(
            webhook_routes.list_deliveries, uuid.UUID(endpoint["id"]), principal, conn, 1
        )["data"]
        endpoint["health"] = health(endpoint, recent[0] if recent else None)
    return render(request, "webhooks.html", status, user=user, org=org, endpoints=listed, **extra)


@router.get("/o/{slug}/webhooks")
def webhooks_page(slug: str, request: Request, conn: DbConn, user: User) -> Response:
    return _endpoints_page(request, conn, user, slug)


@router.post("/o/{slug}/webhooks")
def create_webhook(
    slug: str,
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
    url: Annotated[str, Form(max_length=2048)] = "",
    event_types: Annotated[str, Form(max_length=2000)] = "",
    description: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Register an endpoint of this org through the API's create (its URL vetting included);
    the signing secret is on this one response only."""
    check_csrf(user["csrf"], csrf)
    principal, org = _admin(user, slug)
    types = [item.strip() for item in event_types.replace("\n", ",").split(",") if item.strip()]
    form = {"url": url.strip(), "event_types": event_types, "description": description}
    try:
        body = webhook_routes.NewEndpoint(
            org_id=org["org_id"], url=url.strip(), event_types=types, description=description
        )
        created = _api_call(webhook_routes.create_endpoint, body, principal, conn, backends)
    except ValidationError:
        error = "An endpoint needs a URL (at most 2048 characters) and at most 50 event types."
        return _endpoints_page(request, conn, user, slug, 400, error=error, form=form)
    except PageError as problem:
        if problem.status != 422:
            raise
        error = f"Refused: {problem.message}."
        return _endpoints_page(request, conn, user, slug, 400, error=error, form=form)
    return _endpoints_page(request, conn, user, slug, created=created)


@router.get("/o/{slug}/webhooks/{endpoint_id}")
def endpoint_page(
    slug: str,
    endpoint_id: str,
    request: Request,
    conn: DbConn,
    user: User,
    done: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    principal, org = _admin(user, slug)
    target = _uuid(endpoint_id)
    endpoint = _api_call(webhook_routes.get_endpoint, target, principal, conn)
    deliveries = _api_call(
        webhook_routes.list_deliveries, target, principal, conn, RECENT_DELIVERIES
    )["data"]
    endpoint["health"] = health(endpoint, deliveries[0] if deliveries else None)
    return render(
        request,
        "webhook.html",
        user=user,
        org=org,
        endpoint=endpoint,
        deliveries=deliveries,
        done=DONE.get(done or ""),
    )


def _back(org: dict[str, Any], endpoint_id: Any, done: str) -> RedirectResponse:
    return RedirectResponse(
        f"{PREFIX}/o/{org['slug']}/webhooks/{endpoint_id}?done={done}", status_code=303
    )


@router.post("/o/{slug}/webhooks/{endpoint_id}/disable")
def disable_webhook(
    slug: str,
    endpoint_id: str,
    conn: DbConn,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    principal, org = _admin(user, slug)
    target = _uuid(endpoint_id)
    if endpoints.disable_endpoint(conn, principal.org_ids, target, "disabled by an admin") is None:
        raise PageError(404, "No such page.")
    conn.commit()  # before the answer: a yield dependency's exit runs after it is sent
    return _back(org, target, "disable")


@router.post("/o/{slug}/webhooks/{endpoint_id}/enable")
def enable_webhook(
    slug: str,
    endpoint_id: str,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    principal, org = _admin(user, slug)
    target = _uuid(endpoint_id)
    guard = endpoints.UrlGuard.from_settings(backends.settings)
    try:
        enabled = endpoints.enable_endpoint(conn, principal.org_ids, target, guard=guard)
    except endpoints.InvalidEndpoint as error:
        raise PageError(422, f"Not enabled: {error}.") from None
    if enabled is None:
        raise PageError(404, "No such page.")
    conn.commit()
    return _back(org, target, "enable")


@router.post("/o/{slug}/webhooks/{endpoint_id}/delete")
def delete_webhook(
    slug: str,
    endpoint_id: str,
    conn: DbConn,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    principal, org = _admin(user, slug)
    _api_call(webhook_routes.delete_endpoint, _uuid(endpoint_id), principal, conn)
    return RedirectResponse(f"{PREFIX}/o/{org['slug']}/webhooks", status_code=303)


@router.post("/o/{slug}/webhooks/deliveries/{delivery_id}/redeliver")
def redeliver(
    slug: str,
    delivery_id: str,
    conn: DbConn,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    principal, org = _admin(user, slug)
    delivery = _api_call(webhook_routes.redeliver, _uuid(delivery_id), principal, conn)
    return _back(org, delivery["endpoint_id"], "redeliver")
