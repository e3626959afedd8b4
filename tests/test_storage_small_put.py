"""storage.SmallPut against the stack's S3 server: the same object as the client's put_object,
a request the server refuses (a wrong secret) or cannot take (no server) is an error that the
delivery turns into 75, never a silent success."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError, HTTPClientError

from orderflow_ingest import storage
from orderflow_ingest.settings import Settings


def _put(put: storage.SmallPut, bucket: str, key: str, body: bytes, sha256_hex: str) -> None:
    put.put(bucket, key, io.BytesIO(body), len(body), sha256_hex, "message/rfc822", {"sha256": "x"})


def test_small_put_stores_the_object_with_its_type_and_metadata(settings: Any, s3: Any) -> None:
    body = b"From: a@example.org\r\n\r\n" + b"order line\r\n" * 500
    key = f"raw/test/{uuid.uuid4()}.eml"
    put = storage.SmallPut(settings, max_pool_connections=2)
    _put(put, settings.s3_bucket, key, body, hashlib.sha256(body).hexdigest())
    stored = s3.get_object(Bucket=settings.s3_bucket, Key=key)
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "message/rfc822"
    assert stored["Metadata"] == {"sha256": "x"}


def test_small_put_with_a_wrong_secret_is_refused(settings: Any) -> None:
    wrong = storage.SmallPut(_with(settings, s3_secret_key="not-the-secret"))
    body = b"x"
    digest = hashlib.sha256(body).hexdigest()
    with pytest.raises(ClientError):
        _put(wrong, settings.s3_bucket, f"raw/test/{uuid.uuid4()}", body, digest)


def test_small_put_to_a_closed_port_is_a_backend_error(settings: Any) -> None:
    closed = storage.SmallPut(_with(settings, s3_endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(HTTPClientError):
        _put(closed, settings.s3_bucket, "raw/test/x", b"x", hashlib.sha256(b"x").hexdigest())


def _with(settings: Any, **changes: Any) -> Settings:
    """The settings with some values replaced."""
    values = settings.as_dict()
    values.update({"ORDERFLOW_" + name.upper(): value for name, value in changes.items()})
    return Settings(values, None)
