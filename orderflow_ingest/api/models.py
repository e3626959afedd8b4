"""Response and request bodies: what the OpenAPI document promises."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from orderflow_ingest.keys import PERMISSIONS


class MessageSummary(BaseModel):
    id: str
    org_id: str
    status: str
    message_id: str | None
    message_id_synthetic: bool
    from_email: str | None
    to_email: str | None
    subject: str | None
    received_at: datetime
    size_bytes: int | None
    sha256: str | None
    trace_id: str
    document_count: int


class MessageList(BaseModel):
    data: list[MessageSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class Document(BaseModel):
    id: str
    part_path: str
    file_name: str
    mime_type: str
    size_bytes: int
    sha256: str
    status: str
    decision: dict[str, Any] | None
    created_at: datetime


class DocumentDetail(Document):
    org_id: str
    inbound_message_id: str


class SkippedPart(BaseModel):
    part_path: str
    content_type: str | None
    decision: str
    reason: str


class HistoryEntry(BaseModel):
    id: int
    type: str
    occurred_at: datetime
    data: dict[str, Any]


class MessageDetail(MessageSummary):
    envelope_sender: str | None
    envelope_recipient: str | None
    postfix_queue_id: str | None
    error: dict[str, Any] | None
    verdicts: dict[str, Any] | None = Field(
        description="SPF, DKIM and DMARC as our milter saw them."
    )
    history: list[HistoryEntry]
    documents: list[Document]
    skipped_parts: list[SkippedPart]


class Link(BaseModel):
    url: str = Field(description="GET it without credentials before expires_at; single object.")
    expires_at: datetime


class ReprocessResult(BaseModel):
    id: str
    action: str
    reason: str
    status_before: str


class Event(BaseModel):
    id: int
    type: str
    org_id: str | None
    occurred_at: datetime
    trace_id: str | None
    inbound_message_id: str | None
    document_id: str | None
    data: dict[str, Any]
    cursor: str = Field(description="Resume the feed right after this event.")


class EventList(BaseModel):
    data: list[Event]
    next_cursor: str = Field(description="Pass as `after` next time (the same one if nothing new).")


class Key(BaseModel):
    id: str
    name: str
    hint: str
    org_ids: list[str]
    permissions: list[str]
    allowed_ips: list[str] | None
    expires_at: datetime | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyList(BaseModel):
    data: list[Key]


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    org_ids: list[UUID] = Field(min_length=1, max_length=100)
    permissions: list[str] = Field(min_length=1, max_length=len(PERMISSIONS))
    expires_at: datetime | None = None
    allowed_ips: list[str] | None = Field(default=None, max_length=100)


class CreatedKey(Key):
    secret: str = Field(description="Shown once; only its hash is stored.")
