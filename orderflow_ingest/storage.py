"""S3 object storage: the client, deterministic keys, and streamed puts and gets.

Keys are derived from ids, never from sender-controlled text, so a retried step writes the
same object again instead of a second one, and no filename reaches a key unsanitised.
"""

from __future__ import annotations

from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from orderflow_ingest.settings import Settings

# Parts above this size go up as a multipart upload, 8 MiB at a time, so memory stays bounded.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=MULTIPART_THRESHOLD,
    multipart_chunksize=MULTIPART_THRESHOLD,
    max_concurrency=2,
    use_threads=True,
)


def make_client(settings: Settings, max_pool_connections: int = 10) -> Any:
    """A boto3 S3 client with short timeouts, so an outage is a quick tempfail, not a hang."""
    config = Config(
        connect_timeout=settings.backend_timeout,
        read_timeout=settings.backend_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        # Checksums only where S3 requires them: S3-compatible servers (Ceph RGW, SeaweedFS)
        # do not all accept the newer default trailers. Integrity is our own sha256.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Our calls have fixed shapes; validating each one costs CPU on every message.
        parameter_validation=False,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        aws_access_key_id=settings.s3_access_key or None,
        aws_secret_access_key=settings.s3_secret_key or None,
        region_name=settings.s3_region,
        config=config,
    )


def raw_message_key(org_id: str, inbound_message_id: str) -> str:
    return f"raw/{org_id}/{inbound_message_id}.eml"


def document_key(org_id: str, inbound_message_id: str, part_path: str, safe_name: str) -> str:
    """One object per (message, MIME part); the name is already sanitised by the caller."""
    return f"documents/{org_id}/{inbound_message_id}/{part_path}/{safe_name}"


def put_file(client: Any, bucket: str, key: str, path: str, content_type: str) -> None:
    """Upload a file from disk, multipart when large; returns only when S3 has it."""
    client.upload_file(path, bucket, key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER)


def put_stream(client: Any, bucket: str, key: str, stream: IO[bytes], content_type: str) -> None:
    client.upload_fileobj(
        stream, bucket, key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER
    )


def open_object(client: Any, bucket: str, key: str) -> Any:
    """A streaming body: read it in chunks, never whole."""
    return client.get_object(Bucket=bucket, Key=key)["Body"]


def ensure_bucket(client: Any, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=bucket)
