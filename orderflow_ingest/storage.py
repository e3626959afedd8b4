"""S3 object storage: the client, deterministic keys, and streamed puts and gets.

Keys are derived from ids, never from sender-controlled text, so a retried step writes the
same object again instead of a second one, and no filename reaches a key unsanitised.
"""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import quote

import boto3
import urllib3
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError

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


class _KnownPayloadAuth(S3SigV4Auth):
    """botocore's SigV4 for S3, given the body's sha256 that the caller computed already
    (the delivery service hashes every message while it spools it): the request is signed
    over the payload exactly as the client signs it on plain HTTP, without reading the body
    a second time (AWS S3 refuses a body that does not match it)."""

    def payload(self, request: Any) -> str:
        known = request.context.get("payload_sha256")
        return str(known) if known else str(super().payload(request))


class SmallPut:
    """PUT of one object below the multipart threshold: botocore's signer and a pooled
    urllib3 connection, without the client's per-call pipeline (event hooks, endpoint rules,
    parameter serialisation, the second sha256 of the body), which costs the delivery
    service more CPU than the rest of a delivery. Same request as `put_object` (path-style
    URL, SigV4 with the payload hash, Content-Type, x-amz-meta-*); returns only when S3
    answered 200. Faults raise botocore's ClientError / HTTPClientError like the client."""

    def __init__(self, settings: Settings, max_pool_connections: int = 10):
        region = settings.s3_region or "us-east-1"
        endpoint = settings.s3_endpoint_url or f"https://s3.{region}.amazonaws.com"
        self.endpoint = endpoint.rstrip("/")
        session = boto3.session.Session(
            aws_access_key_id=settings.s3_access_key or None,
            aws_secret_access_key=settings.s3_secret_key or None,
            region_name=region,
        )
        credentials = session.get_credentials()
        if credentials is None:
            raise ValueError("no S3 credentials")
        self.auth = _KnownPayloadAuth(credentials, "s3", region)
        self.http = urllib3.PoolManager(
            maxsize=max_pool_connections,
            block=False,
            timeout=urllib3.Timeout(
                connect=settings.backend_timeout, read=settings.backend_timeout
            ),
            # One retry of a pooled connection the server closed meanwhile; the key is
            # deterministic, so a repeated PUT writes the same object again.
            retries=urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0),
        )

    def put(
        self,
        bucket: str,
        key: str,
        body: IO[bytes],
        size: int,
        sha256_hex: str,
        content_type: str,
        metadata: dict[str, str],
    ) -> None:
        url = f"{self.endpoint}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        headers.update({f"x-amz-meta-{name}": value for name, value in metadata.items()})
        request = AWSRequest(method="PUT", url=url, headers=headers)
        request.context["payload_sha256"] = sha256_hex
        self.auth.add_auth(request)
        try:
            response = self.http.request(
                "PUT",
                url,
                body=body,
                headers=dict(request.headers.items()),
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as error:
            raise HTTPClientError(error=error) from None
        if response.status != 200:
            raise ClientError(
                {
                    "Error": {
                        "Code": str(response.status),
                        "Message": response.data[:200].decode("utf-8", "replace"),
                    },
                    "ResponseMetadata": {"HTTPStatusCode": response.status},
                },
                "PutObject",
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
