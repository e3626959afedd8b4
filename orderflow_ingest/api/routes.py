"""The /v1 routes. Every object lookup is filtered by the calling key's orgs, so another
org's id answers 404 exactly like an id that does not exist."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse

from orderflow_ingest import documents, events, keys
from orderflow_ingest.api import links, message_queries, models
from orderflow_ingest.api.context import BackendsDep, DbConn, require
from orderflow_ingest.api.problems import PROBLEM_RESPONSES, ApiProblem, not_found
from orderflow_ingest.ops import queries
from orderflow_ingest.ops import reprocess as reprocess_ops

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)
UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")

MessagesRead = Annotated[keys.Principal, Depends(require("messages:read"))]
RawRead = Annotated[keys.Principal, Depends(require("raw:read"))]
EventsRead = Annotated[keys.Principal, Depends(require("events:read"))]
Reprocess = Annotated[keys.Principal, Depends(require("reprocess"))]
KeysAdmin = Annotated[keys.Principal, Depends(require("keys:admin"))]


@router.get("/messages", response_model=models.MessageList, tags=["messages"])
def list_messages(
    principal: MessagesRead,
    conn: DbConn,
    status: Annotated[
        list[str] | None, Query(description="RECEIVED, STORED, PARSED, FAILED")
    ] = None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    sender: Annotated[str | None, Query(max_length=320)] = None,
    subject: Annotated[str | None, Query(max_length=500)] = None,
    message_id: Annotated[str | None, Query(max_length=1000)] = None,
    has_documents: bool | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Any:
    """The key's orgs' messages, newest first, with filters and cursor pagination."""
    bad = sorted(set(status or ()) - set(queries.STATUSES))
    if bad:
        raise ApiProblem(422, f"unknown status {bad[0]!r}")
    where = message_queries.MessageFilter(
        statuses=tuple(status or ()),
        received_after=received_after,
        received_before=received_before,
        sender=sender,
        subject=subject,
        message_id=message_id,
        has_documents=has_documents,
    )
    try:
        page, next_cursor = message_queries.list_messages(
            conn, principal.org_ids, where, cursor, limit
        )
    except message_queries.InvalidPageCursor as error:
        raise ApiProblem(422, str(error)) from None
    return {"data": page, "next_cursor": next_cursor}


@router.get("/messages/{message_id}", response_model=models.MessageDetail, tags=["messages"])
def get_message(message_id: UUID, principal: MessagesRead, conn: DbConn) -> Any:
    """One message: verdicts, history (from the event log), documents and skipped parts."""
    row = message_queries.get_message(conn, principal.org_ids, str(message_id))
    if row is None:
        raise not_found("message")
    history = [
        {key: event[key] for key in ("id", "type", "occurred_at", "data")}
        for event in events.for_message(conn, row["id"])
    ]
    docs = [
        {**doc, "decision": doc["decision_json"]}
        for doc in documents.documents_for_message(conn, row["id"])
    ]
    parts = documents.parts_for_message(conn, row["id"])
    return {**row, "history": history, "documents": docs, "skipped_parts": parts}


def _link(request: Request, conn: DbConn, backends: BackendsDep, grant_for: links.Grant) -> Any:
    token = links.sign(links.link_key(conn), grant_for)
    return {
        "url": str(request.url_for("download", token=token)),
        "expires_at": datetime.fromtimestamp(grant_for.expires, UTC),
    }


def _expiry(backends: BackendsDep) -> int:
    return int(time.time()) + int(backends.settings.api_link_ttl)


@router.get("/messages/{message_id}/raw", response_model=models.Link, tags=["messages"])
def raw_link(
    message_id: UUID, principal: RawRead, conn: DbConn, backends: BackendsDep, request: Request
) -> Any:
    """A short-lived link to the raw message as received (message/rfc822)."""
    row = message_queries.get_message(conn, principal.org_ids, str(message_id))
    if row is None:
        raise not_found("message")
    if not row["raw_storage_key"]:
        raise ApiProblem(409, "this message's raw content was never stored")
    grant = links.Grant("raw", row["id"], row["org_id"], _expiry(backends))
    return _link(request, conn, backends, grant)


@router.get("/documents/{document_id}", response_model=models.DocumentDetail, tags=["messages"])
def get_document(document_id: UUID, principal: MessagesRead, conn: DbConn) -> Any:
    """One document's metadata (webhook payloads link here); its bytes via /content."""
    doc = message_queries.document_detail(conn, principal.org_ids, str(document_id))
    if doc is None:
        raise not_found("document")
    return doc


@router.get("/documents/{document_id}/content", response_model=models.Link, tags=["messages"])
def document_link(
    document_id: UUID, principal: RawRead, conn: DbConn, backends: BackendsDep, request: Request
) -> Any:
    """A short-lived link to one document's bytes."""
    doc = message_queries.get_document(conn, principal.org_ids, str(document_id))
    if doc is None:
        raise not_found("document")
    grant = links.Grant("document", doc["id"], doc["org_id"], _expiry(backends))
    return _link(request, conn, backends, grant)


@router.get(
    "/downloads/{token}",
    name="download",
    tags=["messages"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The bytes."}},
)
def download(token: Annotated[str, Path(max_length=1000)], backends: BackendsDep) -> Any:
    """The object a signed link names; no API key needed, the link is the credential."""
    # Its own short use of the pool: the connection goes back before the bytes stream.
    with backends.pool.connection() as conn:
        grant = links.verify(links.link_key(conn), token)
        if grant is None:
            raise ApiProblem(404, "no such link, or it has expired")
        if grant.kind == "raw":
            row = message_queries.get_message(conn, [grant.org_id], grant.object_id)
            key = row["raw_storage_key"] if row else None
            filename = f"message-{grant.object_id}.eml"
            media_type = "message/rfc822"
        else:
            doc = message_queries.get_document(conn, [grant.org_id], grant.object_id)
            key = doc["storage_key"] if doc else None
            filename = UNSAFE_FILENAME.sub("_", doc["file_name"])[:150] if doc else ""
            media_type = "application/octet-stream"
    if not key:
        raise ApiProblem(404, "no such link, or it has expired")
    body = backends.s3.get_object(Bucket=backends.settings.s3_bucket, Key=key)["Body"]

    def chunks() -> Any:
        try:
            yield from iter(lambda: body.read(64 * 1024), b"")
        finally:
            body.close()

    return StreamingResponse(
        chunks(),
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename or "document"}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


@router.post(
    "/messages/{message_id}/reprocess",
    response_model=models.ReprocessResult,
    status_code=202,
    tags=["messages"],
)
def reprocess(message_id: UUID, principal: Reprocess, conn: DbConn, backends: BackendsDep) -> Any:
    """Run attachment extraction again from the stored raw message (`reprocess`)."""
    row = queries.message_in_orgs(conn, str(message_id), principal.org_ids)
    if row is None:
        raise not_found("message")
    conn.commit()
    (step,) = reprocess_ops.reprocess(
        conn, backends.redis, backends.s3, backends.settings, [row], dry_run=False
    )
    if step.action in (reprocess_ops.IMPOSSIBLE, reprocess_ops.ERROR):
        raise ApiProblem(409, step.reason)
    return {
        "id": step.inbound_message_id,
        "action": step.action,
        "reason": step.reason,
        "status_before": step.status_before,
    }


@router.get("/events", response_model=models.EventList, tags=["events"])
def list_events(
    principal: EventsRead,
    conn: DbConn,
    after: Annotated[str | None, Query(max_length=200)] = None,
    types: Annotated[
        str | None, Query(max_length=1000, description="Comma-separated types.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=events.MAX_LIMIT)] = 100,
) -> Any:
    """The event feed of the key's orgs, oldest first; never skips, replayable from any cursor."""
    wanted = [item.strip() for item in (types or "").split(",") if item.strip()]
    try:
        data, next_cursor = events.read(
            conn, after, org_ids=principal.org_ids, types=wanted or None, limit=limit
        )
    except events.InvalidCursor as error:
        raise ApiProblem(422, str(error)) from None
    return {"data": data, "next_cursor": next_cursor}


@router.get("/keys", response_model=models.KeyList, tags=["keys"])
def list_keys(principal: KeysAdmin, conn: DbConn) -> Any:
    """Keys whose orgs all lie within this key's orgs."""
    return {"data": keys.list_keys(conn, principal.org_ids)}


@router.post("/keys", response_model=models.CreatedKey, status_code=201, tags=["keys"])
def create_key(body: models.NewKey, principal: KeysAdmin, conn: DbConn) -> Any:
    """A new key for some of this key's orgs with some of its permissions; the secret once."""
    org_ids = sorted({str(org) for org in body.org_ids})  # canonical form, whatever was sent
    outside = sorted(set(org_ids) - set(principal.org_ids))
    if outside:
        raise not_found("org")
    beyond = sorted(set(body.permissions) - principal.permissions)
    if beyond:
        raise ApiProblem(403, f"a key cannot grant what it lacks: {beyond[0]}")
    try:
        row, secret = keys.create_key(
            conn,
            name=body.name,
            org_ids=org_ids,
            permissions=body.permissions,
            created_by=f"api key {principal.key_id}",
            expires_at=body.expires_at,
            allowed_ips=body.allowed_ips,
        )
    except keys.KeyRequestError as error:
        raise ApiProblem(422, str(error)) from None
    conn.commit()  # before the answer: the caller may use the key at once
    return {**row, "secret": secret}


@router.delete("/keys/{key_id}", response_model=models.Key, tags=["keys"])
def revoke_key(key_id: UUID, principal: KeysAdmin, conn: DbConn) -> Any:
    """Revoke a key at once (idempotent)."""
    row = keys.revoke_key(conn, str(key_id), principal.org_ids)
    if row is None:
        raise not_found("key")
    conn.commit()  # before the answer: "revoked" must mean the key no longer works
    return row
