"""The few S3 calls the lifecycle needs beyond storage.py: is an object there, delete it."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

# What S3 and S3-compatible servers answer for an object (or a HEAD of one) that is not there.
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def is_not_found(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in NOT_FOUND


def head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's metadata, or None when it does not exist (other errors raise)."""
    try:
        return dict(client.head_object(Bucket=bucket, Key=key))
    except ClientError as error:
        if is_not_found(error):
            return None
        raise


def delete(client: Any, bucket: str, key: str) -> None:
    """Delete one object; deleting one that is already gone succeeds (a re-run after a crash).

    In a versioned bucket this adds a delete marker: the lifecycle rule's noncurrent-version
    expiration removes the data (docs/operations.md, "S3 lifecycle rules").
    """
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if not is_not_found(error):
            raise
