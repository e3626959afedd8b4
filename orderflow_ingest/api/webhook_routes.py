"""Webhook endpoints and their deliveries over HTTP (webhooks:manage), mounted by app.py.

The logic is orderflow_ingest/webhooks/endpoints.py (every function takes the key's orgs);
this module maps its None ("not within these orgs") to 404 and its refusals to 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from orderflow_ingest import keys
from orderflow_ingest.api.context import BackendsDep, DbConn, require
from orderflow_ingest.api.problems import PROBLEM_RESPONSES, ApiProblem, not_found
from orderflow_ingest.webhooks import endpoints

router = APIRouter(prefix="/v1/webhooks", responses=PROBLEM_RESPONSES, tags=["webhooks"])
Manage = Annotated[keys.Principal, Depends(require("webhooks:manage"))]


class NewEndpoint(BaseModel):
    org_id: UUID
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[str] = Field(default_factory=list, max_length=50)
    description: str = Field(default="", max_length=500)


class Recover(BaseModel):
    since: datetime
    until: datetime | None = None


class Listing(BaseModel):
    data: list[dict[str, Any]]


class Recovered(BaseModel):
    requeued: int


@router.get("/endpoints", response_model=Listing)
def list_endpoints(principal: Manage, conn: DbConn) -> Any:
    return {"data": endpoints.list_endpoints(conn, principal.org_ids)}


@router.post("/endpoints", response_model=dict[str, Any], status_code=201)
def create_endpoint(
    body: NewEndpoint, principal: Manage, conn: DbConn, backends: BackendsDep
) -> Any:
    """Register an endpoint for one of the key's orgs; the signing secret is shown once."""
    try:
        created = endpoints.create_endpoint(
            conn,
            principal.org_ids,
            body.org_id,
            body.url,
            body.event_types,
            description=body.description,
            guard=endpoints.UrlGuard.from_settings(backends.settings),
        )
    except endpoints.InvalidEndpoint as error:
        raise ApiProblem(422, str(error)) from None
    if created is None:
        raise not_found("org")
    endpoint, secret = created
    conn.commit()  # before the answer (the dependency's commit runs after it is sent)
    return {**endpoint, "secret": secret}


@router.get("/endpoints/{endpoint_id}", response_model=dict[str, Any])
def get_endpoint(endpoint_id: UUID, principal: Manage, conn: DbConn) -> Any:
    found = endpoints.get_endpoint(conn, principal.org_ids, endpoint_id)
    if found is None:
        raise not_found("endpoint")
    return found


@router.delete("/endpoints/{endpoint_id}", status_code=204)
def delete_endpoint(endpoint_id: UUID, principal: Manage, conn: DbConn) -> None:
    if not endpoints.delete_endpoint(conn, principal.org_ids, endpoint_id):
        raise not_found("endpoint")
    conn.commit()


@router.post("/endpoints/{endpoint_id}/rotate-secret", response_model=dict[str, Any])
def rotate_secret(endpoint_id: UUID, principal: Manage, conn: DbConn, backends: BackendsDep) -> Any:
    """A new signing secret, shown once; the old one keeps signing beside it for
    ORDERFLOW_WEBHOOK_SECRET_GRACE, so the receiver can switch without a gap."""
    grace = endpoints.UrlGuard.from_settings(backends.settings).secret_grace_seconds
    rotated = endpoints.rotate_secret(conn, principal.org_ids, endpoint_id, grace_seconds=grace)
    if rotated is None:
        raise not_found("endpoint")
    endpoint, secret = rotated
    conn.commit()  # before the answer: the receiver may switch to the new secret at once
    return {**endpoint, "secret": secret}


@router.post("/endpoints/{endpoint_id}/disable", response_model=dict[str, Any])
def disable_endpoint(endpoint_id: UUID, principal: Manage, conn: DbConn) -> Any:
    """Stop delivering (pending deliveries fail; an endpoint.disabled event is recorded)."""
    found = endpoints.disable_endpoint(
        conn, principal.org_ids, endpoint_id, f"disabled through the API by key {principal.key_id}"
    )
    if found is None:
        raise not_found("endpoint")
    conn.commit()
    return found


@router.post("/endpoints/{endpoint_id}/enable", response_model=dict[str, Any])
def enable_endpoint(
    endpoint_id: UUID, principal: Manage, conn: DbConn, backends: BackendsDep
) -> Any:
    """Deliver again after a 410 or a long outage (the URL is vetted again first); failed
    deliveries stay failed until `recover` re-queues a time window of them."""
    try:
        found = endpoints.enable_endpoint(
            conn,
            principal.org_ids,
            endpoint_id,
            guard=endpoints.UrlGuard.from_settings(backends.settings),
        )
    except endpoints.InvalidEndpoint as error:
        raise ApiProblem(422, str(error)) from None
    if found is None:
        raise not_found("endpoint")
    conn.commit()
    return found


@router.get("/endpoints/{endpoint_id}/deliveries", response_model=Listing)
def list_deliveries(
    endpoint_id: UUID,
    principal: Manage,
    conn: DbConn,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
) -> Any:
    """The endpoint's deliveries, newest first; `status` keeps those in one state (e.g. the
    failed ones to redeliver, as the CLI's `webhook deliveries --status`)."""
    found = endpoints.list_deliveries(conn, principal.org_ids, endpoint_id, limit, status)
    if found is None:
        raise not_found("endpoint")
    return {"data": found}


@router.post("/endpoints/{endpoint_id}/recover", response_model=Recovered)
def recover(endpoint_id: UUID, body: Recover, principal: Manage, conn: DbConn) -> Any:
    """Re-queue every failed delivery of the endpoint whose event happened in [since, until)."""
    count = endpoints.recover(conn, principal.org_ids, endpoint_id, body.since, body.until)
    if count is None:
        raise not_found("endpoint")
    conn.commit()
    return {"requeued": count}


@router.get("/deliveries/{delivery_id}", response_model=dict[str, Any])
def get_delivery(delivery_id: UUID, principal: Manage, conn: DbConn) -> Any:
    """One delivery with every attempt: time, address, status, latency, response excerpt."""
    found = endpoints.get_delivery(conn, principal.org_ids, delivery_id)
    if found is None:
        raise not_found("delivery")
    return found


@router.post("/deliveries/{delivery_id}/redeliver", response_model=dict[str, Any])
def redeliver(delivery_id: UUID, principal: Manage, conn: DbConn) -> Any:
    """Send one delivery again: same body, same webhook-id, a fresh retry schedule."""
    found = endpoints.redeliver(conn, principal.org_ids, delivery_id)
    if found is None:
        raise not_found("delivery")
    conn.commit()
    return found
