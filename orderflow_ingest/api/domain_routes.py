"""Custom domains over HTTP (domains:manage), mounted by app.py.

The logic is the CLI's (`orderflow-ingest domain ...`): domains/manage.py registers and checks,
domains/store.py queries, here scoped to the key's orgs, so another org's domain id answers 404
like one that does not exist. A name that is not a domain, an ingest domain, or no local part
is a 422; a domain registered already (by any org) is a 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from orderflow_ingest import keys
from orderflow_ingest.api.context import BackendsDep, DbConn, require
from orderflow_ingest.api.problems import PROBLEM_RESPONSES, ApiProblem, not_found
from orderflow_ingest.domains import manage, store

router = APIRouter(prefix="/v1/domains", responses=PROBLEM_RESPONSES, tags=["domains"])
PERMISSION = "domains:manage"
Manage = Annotated[keys.Principal, Depends(require(PERMISSION))]


class NewDomain(BaseModel):
    org_id: UUID
    domain: str = Field(min_length=1, max_length=255, examples=["po.acme-corp.com"])
    local_parts: list[str] = Field(
        default_factory=list, max_length=100, description="Local parts accepted there."
    )
    accept_all: bool = Field(default=False, description="Accept every local part instead.")


class Domain(BaseModel):
    id: str
    org_id: str
    org_slug: str
    domain: str
    state: str = Field(description="pending, verified, mx_lost or suspended")
    accept_all: bool
    local_parts: list[str]
    txt_name: str = Field(description="Publish a TXT record at this name ...")
    txt_value: str = Field(description="... with exactly this value.")
    mx_hosts: list[str] = Field(description="Every MX of the domain must be one of these.")
    pass_streak: int
    mx_fail_streak: int
    txt_fail_streak: int
    last_checked_at: datetime | None
    last_result: dict[str, Any] | None = Field(description="txt, mx (yes/no/error), detail")
    mx_lost_since: datetime | None
    verified_at: datetime | None
    state_changed_at: datetime
    created_at: datetime


class Checked(Domain):
    event: str | None = Field(description="The transition this check made, if any.")
    previous_state: str
    confirmations_needed: int = Field(description="Consecutive passing checks to verify.")


class DomainList(BaseModel):
    data: list[Domain]


def _scoped(conn: DbConn, principal: keys.Principal, domain_id: UUID) -> dict[str, Any]:
    row = store.get_domain_by_id(conn, domain_id, principal.org_ids)
    if row is None:
        raise not_found("domain")
    return row


@router.get("", response_model=DomainList)
def list_domains(principal: Manage, conn: DbConn, backends: BackendsDep) -> Any:
    """The live custom domains of the key's orgs, by name."""
    rows = store.list_domains(conn, org_ids=principal.org_ids)
    return {"data": [{**row, **manage.publish(row, backends.settings)} for row in rows]}


@router.post("", response_model=Domain, status_code=201)
def add_domain(body: NewDomain, principal: Manage, conn: DbConn, backends: BackendsDep) -> Any:
    """Register a domain for one of the key's orgs (pending); answers the records to publish."""
    if str(body.org_id) not in principal.org_ids:
        raise not_found("org")
    try:
        row = manage.add_domain(
            conn,
            backends.settings,
            str(body.org_id),
            body.domain,
            body.accept_all,
            body.local_parts,
        )
    except store.DomainTaken as error:
        conn.rollback()
        raise ApiProblem(409, str(error)) from None
    except store.DomainError as error:
        conn.rollback()
        raise ApiProblem(422, str(error)) from None
    conn.commit()  # before the answer (the dependency's commit runs after it is sent)
    return row


@router.get("/{domain_id}", response_model=Domain)
def get_domain(domain_id: UUID, principal: Manage, conn: DbConn, backends: BackendsDep) -> Any:
    row = _scoped(conn, principal, domain_id)
    return {**row, **manage.publish(row, backends.settings)}


@router.post("/{domain_id}/verify", response_model=Checked)
def verify_domain(domain_id: UUID, principal: Manage, conn: DbConn, backends: BackendsDep) -> Any:
    """Check the TXT and MX now and apply the result: one of the consecutive passing checks
    verification needs (the periodic `domain check` makes the others)."""
    row = _scoped(conn, principal, domain_id)
    conn.rollback()
    checked = manage.verify(conn, backends.settings, row["domain"])
    if checked is None:  # removed in between
        raise not_found("domain")
    return checked


@router.delete("/{domain_id}", status_code=204)
def remove_domain(domain_id: UUID, principal: Manage, conn: DbConn) -> None:
    """Forget the domain: Postfix stops accepting it at once (the row stays, removed_at set)."""
    row = _scoped(conn, principal, domain_id)
    if not store.remove_domain(conn, row["domain"], principal.org_ids):
        raise not_found("domain")
    conn.commit()
