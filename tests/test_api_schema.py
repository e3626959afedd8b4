"""Schemathesis against the OpenAPI document: generated requests (bounded, seeded)
to the real server must never get a 5xx, and every response must match the document
(status code, content type, body schema)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_support import ALL_PERMISSIONS, api_server, bearer, create_key
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(stack: Any) -> Iterator[dict[str, str]]:
    key = create_key(stack, "schemathesis", ("acme",), ALL_PERMISSIONS)
    with api_server(stack) as base:
        yield {"base": base, "key": key}


# The committed document, which test_api_server proves equal to the served one (loaded at
# collection time, before any server runs; requests go to the real server below).
schema = schemathesis.openapi.from_path(str(Path(__file__).parent.parent / "docs" / "openapi.json"))


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_to_the_served_document(case: Any, served: Any) -> None:
    case.call_and_validate(
        base_url=served["base"],
        headers=bearer(served["key"]),
        timeout=30,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
