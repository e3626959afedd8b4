"""The HTTP API as a real server process (uvicorn, started by the CLI) and a real HTTP client,
against messages delivered through the stack's Postfix and extracted by a real worker."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ALL_PERMISSIONS, api_server, bearer, create_key
from conftest import send_mail
from ops_support import run_worker, wait_status
from samples import address, minimal_pdf, order_email

pytestmark = pytest.mark.stack

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def world(stack: Any, settings: Any) -> Iterator[dict[str, Any]]:
    """One parsed order for acme, one for globex, keys for each, and the API running."""
    import psycopg
    from psycopg.rows import dict_row

    acme_msg = order_email(attachments=[("PO-1.pdf", "application/pdf", minimal_pdf())])
    globex_msg = order_email(
        to=address("globex"), attachments=[("PO-2.pdf", "application/pdf", minimal_pdf())]
    )
    send_mail(stack, acme_msg, [address("acme")])
    send_mail(stack, globex_msg, [address("globex")])
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        wait_status(db, acme_msg["Message-ID"], ("STORED",))
        wait_status(db, globex_msg["Message-ID"], ("STORED",), slug="globex")
        run_worker(stack)
        acme_row = wait_status(db, acme_msg["Message-ID"], ("PARSED",))
        globex_row = wait_status(db, globex_msg["Message-ID"], ("PARSED",), slug="globex")

        def doc_id(message: dict[str, Any]) -> str:
            row = db.execute(
                "SELECT id::text AS id FROM document WHERE inbound_message_id = %s",
                (message["id"],),
            ).fetchone()
            assert row is not None
            return str(row["id"])

        acme_doc, globex_doc = doc_id(acme_row), doc_id(globex_row)
    acme_key = create_key(stack, "acme-all", ("acme",), ALL_PERMISSIONS)
    globex_key = create_key(stack, "globex-all", ("globex",), ALL_PERMISSIONS)
    reader_key = create_key(stack, "acme-reader", ("acme",), ("messages:read",))
    with api_server(stack) as base:
        yield {
            "base": base,
            "acme": acme_row,
            "globex": globex_row,
            "acme_doc": acme_doc,
            "globex_doc": globex_doc,
            "acme_key": acme_key,
            "globex_key": globex_key,
            "reader_key": reader_key,
            "acme_raw": acme_msg,
        }


def client(world: dict[str, Any], key: str = "acme_key") -> httpx.Client:
    return httpx.Client(base_url=world["base"], headers=bearer(world[key]), timeout=30)


def test_a_key_lists_only_its_own_orgs_messages(world: dict[str, Any]) -> None:
    with client(world) as http:
        response = http.get("/v1/messages", params={"limit": 200})
    assert response.status_code == 200
    ids = {item["id"] for item in response.json()["data"]}
    assert world["acme"]["id"] in ids
    assert world["globex"]["id"] not in ids
    assert {item["org_id"] for item in response.json()["data"]} == {world["acme"]["org_id"]}


def test_message_filters_and_cursor_pagination(world: dict[str, Any]) -> None:
    message_id = world["acme"]["source_message_id"]
    with client(world) as http:
        found = http.get("/v1/messages", params={"message_id": message_id.strip("<>")}).json()
        assert [item["id"] for item in found["data"]] == [world["acme"]["id"]]
        assert (
            http.get(
                "/v1/messages",
                params={"message_id": message_id, "has_documents": "false"},
            ).json()["data"]
            == []
        )
        assert (
            http.get("/v1/messages", params={"message_id": message_id, "status": "FAILED"}).json()[
                "data"
            ]
            == []
        )
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1, "status": "PARSED"}
            if cursor:
                params["cursor"] = cursor
            page = http.get("/v1/messages", params=params).json()
            seen.extend(item["id"] for item in page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        everything = http.get("/v1/messages", params={"limit": 200, "status": "PARSED"}).json()
    assert seen == [item["id"] for item in everything["data"]]
    assert len(seen) == len(set(seen))


def test_sender_subject_and_time_range_filters(world: dict[str, Any]) -> None:
    from datetime import timedelta

    row = world["acme"]
    received = row["received_at"]
    second = timedelta(seconds=1)
    middle = row["subject"][2:-2].swapcase()  # a substring, in another case

    def ids(**params: Any) -> set[str]:
        with client(world) as http:
            response = http.get("/v1/messages", params={"limit": 200, **params})
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["data"]}

    assert row["id"] in ids(sender=row["from_email"].upper())
    assert row["id"] in ids(sender=row["envelope_sender"])
    assert row["id"] not in ids(sender="nobody@nowhere.test")
    assert row["id"] in ids(subject=middle)
    assert row["id"] not in ids(subject=row["subject"] + " and more")
    window = {
        "received_after": (received - second).isoformat(),
        "received_before": (received + second).isoformat(),
    }
    assert row["id"] in ids(**window)
    assert row["id"] not in ids(received_after=(received + second).isoformat())
    assert row["id"] not in ids(received_before=received.isoformat())  # before is exclusive
    assert ids(**window, sender=row["from_email"], subject=middle) == {row["id"]}


def test_one_message_has_verdicts_history_documents_and_skipped_parts(
    world: dict[str, Any],
) -> None:
    with client(world) as http:
        response = http.get(f"/v1/messages/{world['acme']['id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "PARSED"
    assert [h["type"] for h in body["history"]][:3] == [
        "message.received",
        "message.stored",
        "document.created",
    ]
    assert body["history"][-1]["type"] == "message.parsed"
    assert [d["file_name"] for d in body["documents"]] == ["PO-1.pdf"]
    assert "storage_key" not in body["documents"][0]
    assert any(part["decision"] for part in body["skipped_parts"])
    assert "verdicts" in body


def test_raw_download_through_a_short_lived_signed_link(
    world: dict[str, Any], s3: Any, settings: Any
) -> None:
    with client(world) as http:
        link = http.get(f"/v1/messages/{world['acme']['id']}/raw").json()
    # The link is the credential: no API key on the download.
    download = httpx.get(link["url"], timeout=30)
    assert download.status_code == 200
    assert download.headers["content-disposition"].startswith("attachment;")
    stored = s3.get_object(Bucket=settings.s3_bucket, Key=world["acme"]["raw_storage_key"])
    assert (
        hashlib.sha256(download.content).digest() == hashlib.sha256(stored["Body"].read()).digest()
    )
    from datetime import UTC, datetime

    expires = datetime.fromisoformat(link["expires_at"])
    assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 600
    token = link["url"].rsplit("/", 1)[1]
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert httpx.get(link["url"].replace(token, forged), timeout=30).status_code == 404


def test_document_download_through_a_signed_link(world: dict[str, Any]) -> None:
    with client(world) as http:
        detail = http.get(f"/v1/documents/{world['acme_doc']}").json()
        assert detail["inbound_message_id"] == world["acme"]["id"]
        assert detail["file_name"] == "PO-1.pdf"
        link = http.get(f"/v1/documents/{world['acme_doc']}/content").json()
    download = httpx.get(link["url"], timeout=30)
    assert download.status_code == 200
    assert download.content == minimal_pdf()
    assert 'filename="PO-1.pdf"' in download.headers["content-disposition"]


def _endpoints(world: dict[str, Any]) -> list[tuple[str, str]]:
    """Every object endpoint, pointed at globex's objects (the caller is acme's key)."""
    message, document = world["globex"]["id"], world["globex_doc"]
    return [
        ("GET", f"/v1/messages/{message}"),
        ("GET", f"/v1/messages/{message}/raw"),
        ("GET", f"/v1/documents/{document}"),
        ("GET", f"/v1/documents/{document}/content"),
        ("POST", f"/v1/messages/{message}/reprocess"),
    ]


def test_another_orgs_objects_are_404_on_every_endpoint(world: dict[str, Any]) -> None:
    with client(world) as http:
        for method, path in _endpoints(world):
            response = http.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
        # The same paths with the owner's key exist (so the 404 above is the scope).
    with client(world, "globex_key") as http:
        for method, path in _endpoints(world):
            if method == "GET":
                assert http.request(method, path).status_code == 200, path


def test_another_orgs_key_is_404_on_key_revocation(world: dict[str, Any], stack: Any) -> None:
    with client(world, "globex_key") as http:
        created = http.post(
            "/v1/keys",
            json={
                "name": "globex-child",
                "org_ids": [world["globex"]["org_id"]],
                "permissions": ["messages:read"],
            },
        )
        assert created.status_code == 201, created.text
    with client(world) as http:
        assert http.delete(f"/v1/keys/{created.json()['id']}").status_code == 404
        listed = {key["id"] for key in http.get("/v1/keys").json()["data"]}
        assert created.json()["id"] not in listed
        # Creating a key for another org's id is the same 404.
        response = http.post(
            "/v1/keys",
            json={
                "name": "x",
                "org_ids": [world["globex"]["org_id"]],
                "permissions": ["messages:read"],
            },
        )
        assert response.status_code == 404


def test_another_orgs_events_are_not_in_the_feed(world: dict[str, Any]) -> None:
    with client(world) as http:
        feed = http.get("/v1/events", params={"limit": 1000}).json()
    message_ids = {event["inbound_message_id"] for event in feed["data"]}
    assert world["acme"]["id"] in message_ids
    assert world["globex"]["id"] not in message_ids
    assert {event["org_id"] for event in feed["data"]} == {world["acme"]["org_id"]}


def test_event_feed_pages_by_cursor_and_filters_types(world: dict[str, Any]) -> None:
    with client(world) as http:
        everything = http.get("/v1/events", params={"limit": 1000}).json()["data"]
        paged: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["after"] = cursor
            page = http.get("/v1/events", params=params).json()
            if not page["data"]:
                break
            paged.extend(event["id"] for event in page["data"])
            cursor = page["next_cursor"]
        parsed = http.get("/v1/events", params={"types": "message.parsed"}).json()["data"]
        bad = http.get("/v1/events", params={"after": "not-a-cursor"})
    assert paged == [event["id"] for event in everything]
    assert parsed and {event["type"] for event in parsed} == {"message.parsed"}
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(PROBLEM)


def test_missing_or_wrong_keys_are_401_and_missing_permissions_403(
    world: dict[str, Any],
) -> None:
    path = f"/v1/messages/{world['acme']['id']}"
    bad_checksum = world["acme_key"][:-1] + ("a" if world["acme_key"][-1] != "a" else "b")
    for headers in ({}, {"Authorization": "Bearer nope"}, bearer(bad_checksum)):
        response = httpx.get(world["base"] + path, headers=headers, timeout=30)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.headers["www-authenticate"].startswith("Bearer")
    with client(world, "reader_key") as http:
        assert http.get(path).status_code == 200
        denied = http.get(f"{path}/raw")
        assert denied.status_code == 403
        assert denied.json()["status"] == 403
        assert http.get("/v1/events").status_code == 403
        assert http.get("/v1/keys").status_code == 403


def test_a_key_cannot_create_a_key_with_more_than_it_has(world: dict[str, Any]) -> None:
    with client(world) as http:
        child = http.post(
            "/v1/keys",
            json={
                "name": "child",
                "org_ids": [world["acme"]["org_id"]],
                "permissions": ["messages:read"],
            },
        )
        assert child.status_code == 201
        secret = child.json()["secret"]
        assert secret.startswith("ofi_live_")
        assert "secret" not in json.dumps(http.get("/v1/keys").json())
    with httpx.Client(base_url=world["base"], headers=bearer(secret), timeout=30) as http:
        assert http.get("/v1/messages").status_code == 200
        assert (
            http.post(
                "/v1/keys",
                json={
                    "name": "x",
                    "org_ids": [world["acme"]["org_id"]],
                    "permissions": ["raw:read"],
                },
            ).status_code
            == 403
        )
    with client(world) as http:
        revoked = http.delete(f"/v1/keys/{child.json()['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert (
        httpx.get(world["base"] + "/v1/messages", headers=bearer(secret), timeout=30).status_code
        == 401
    )


def test_a_key_admin_grants_every_permission_it_holds_for_an_org_id_in_any_case(
    world: dict[str, Any],
) -> None:
    """All seven permissions fit in one request (the body once allowed six), and an org id is
    a UUID however it is spelled."""
    with client(world) as http:
        made = http.post(
            "/v1/keys",
            json={
                "name": "everything",
                "org_ids": [world["acme"]["org_id"].upper()],
                "permissions": list(ALL_PERMISSIONS),
            },
        )
        assert made.status_code == 201, made.text
        assert made.json()["org_ids"] == [world["acme"]["org_id"]]
        assert sorted(made.json()["permissions"]) == sorted(ALL_PERMISSIONS)
        not_an_id = http.post(
            "/v1/keys",
            json={"name": "x", "org_ids": ["acme"], "permissions": ["messages:read"]},
        )
        assert http.delete(f"/v1/keys/{made.json()['id']}").status_code == 200
    assert not_an_id.status_code == 422
    assert not_an_id.headers["content-type"].startswith(PROBLEM)


def test_reprocess_through_the_api_reopens_and_records_the_event(world: dict[str, Any]) -> None:
    with client(world) as http:
        response = http.post(f"/v1/messages/{world['acme']['id']}/reprocess")
        assert response.status_code == 202, response.text
        assert response.json()["action"] == "reopen"
        history = http.get(f"/v1/messages/{world['acme']['id']}").json()["history"]
        missing = http.post(f"/v1/messages/{uuid.uuid4()}/reprocess")
    assert history[-1]["type"] == "message.reprocessed"
    assert missing.status_code == 404


def test_the_served_openapi_document_is_the_committed_one(world: dict[str, Any]) -> None:
    served = httpx.get(world["base"] + "/v1/openapi.json", timeout=30).json()
    committed = json.loads((DOCS / "openapi.json").read_text())
    assert served == committed, "run `orderflow-ingest api --print-openapi > docs/openapi.json`"


def test_another_orgs_webhook_endpoints_and_deliveries_are_404(
    world: dict[str, Any], settings: Any
) -> None:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        endpoint = db.execute(
            # Disabled: no dispatcher of another test may ever send to it.
            "INSERT INTO webhook_endpoint (org_id, url, secret, enabled, disabled_reason)"
            " VALUES (%s, 'https://receiver.example/hook', 'whsec_dGVzdA', false, 'test')"
            " RETURNING id::text AS id",
            (world["globex"]["org_id"],),
        ).fetchone()["id"]
        delivery = db.execute(
            "INSERT INTO webhook_delivery (endpoint_id, org_id, event_id, event_type,"
            " event_occurred_at, webhook_id, payload, status)"
            " VALUES (%s, %s, 1, 'message.parsed', now(), 'msg_test', '{}', 'failed')"
            " RETURNING id::text AS id",
            (endpoint, world["globex"]["org_id"]),
        ).fetchone()["id"]
    requests = [
        ("GET", f"/v1/webhooks/endpoints/{endpoint}", None),
        ("GET", f"/v1/webhooks/endpoints/{endpoint}/deliveries", None),
        ("POST", f"/v1/webhooks/endpoints/{endpoint}/recover", {"since": "2020-01-01T00:00:00Z"}),
        ("POST", f"/v1/webhooks/deliveries/{delivery}/redeliver", None),
        ("DELETE", f"/v1/webhooks/endpoints/{endpoint}", None),
        (
            "POST",
            "/v1/webhooks/endpoints",
            {"org_id": world["globex"]["org_id"], "url": "https://receiver.example/x"},
        ),
    ]
    with client(world) as http:
        for method, path, body in requests:
            response = http.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
        listed = {item["id"] for item in http.get("/v1/webhooks/endpoints").json()["data"]}
        assert endpoint not in listed
    with client(world, "globex_key") as http:
        assert http.get(f"/v1/webhooks/endpoints/{endpoint}").status_code == 200
        assert http.get(f"/v1/webhooks/endpoints/{endpoint}/deliveries").status_code == 200


def test_doctor_sees_the_running_api(world: dict[str, Any], settings: Any) -> None:
    from orderflow_ingest.ops.doctor import OK, check_api

    check = check_api(settings, world["base"].removeprefix("http://"))
    assert check.status == OK, check.detail


def test_a_keys_ip_allow_list_sees_the_client_behind_a_local_proxy(
    world: dict[str, Any], stack: Any
) -> None:
    from ops_support import cli_json

    code, created = cli_json(
        stack,
        "key",
        "create",
        "lan-only",
        "--org",
        "acme",
        "-p",
        "messages:read",
        "--allow-ip",
        "10.1.0.0/16",
    )
    assert code == 0
    url = world["base"] + "/v1/messages"
    headers = bearer(created["secret"])
    # A proxy on this host (loopback, trusted) forwards the client's address.
    inside = httpx.get(url, headers={**headers, "X-Forwarded-For": "10.1.2.3"}, timeout=30)
    outside = httpx.get(url, headers={**headers, "X-Forwarded-For": "198.51.100.7"}, timeout=30)
    direct = httpx.get(url, headers=headers, timeout=30)
    assert inside.status_code == 200
    assert outside.status_code == 401
    assert direct.status_code == 401


def test_a_created_key_works_and_a_revoked_one_stops_the_moment_the_answer_arrives(
    world: dict[str, Any],
) -> None:
    """The request's connection commits after FastAPI has sent the response: routes whose
    change the caller acts on at once commit before they answer. Repeated, as the race was
    a matter of timing."""
    for _ in range(10):
        with client(world) as http:
            made = http.post(
                "/v1/keys",
                json={
                    "name": "short-lived",
                    "org_ids": [world["acme"]["org_id"]],
                    "permissions": ["messages:read"],
                },
            )
            assert made.status_code == 201
            secret, key_id = made.json()["secret"], made.json()["id"]
            with httpx.Client(base_url=world["base"], headers=bearer(secret), timeout=30) as new:
                assert new.get("/v1/messages").status_code == 200
                assert http.delete(f"/v1/keys/{key_id}").status_code == 200
                assert new.get("/v1/messages").status_code == 401


def _insert_endpoint(settings: Any, org_id: str, url: str = "https://receiver.example/hook") -> str:
    """A disabled endpoint written directly (no dispatcher of another test may send to it)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        row = db.execute(
            "INSERT INTO webhook_endpoint (org_id, url, secret, enabled, disabled_reason)"
            " VALUES (%s, %s, 'whsec_dGVzdA', false, 'test') RETURNING id::text AS id",
            (org_id, url),
        ).fetchone()
    assert row is not None
    return str(row["id"])


def _insert_delivery(settings: Any, endpoint: str, org_id: str, attempts: int = 0) -> str:
    """A failed delivery of `endpoint` with `attempts` recorded attempts (HTTP 503 each)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        row = db.execute(
            "INSERT INTO webhook_delivery (endpoint_id, org_id, event_id, event_type,"
            " event_occurred_at, webhook_id, payload, status, total_attempts)"
            " VALUES (%s, %s, 1, 'message.parsed', now(), 'evt_1', '{}', 'failed', %s)"
            " RETURNING id::text AS id",
            (endpoint, org_id, attempts),
        ).fetchone()
        assert row is not None
        for n in range(attempts):
            db.execute(
                "INSERT INTO webhook_attempt (delivery_id, address, status_code, duration_ms,"
                " response_excerpt) VALUES (%s, '203.0.113.9', 503, %s, %s)",
                (row["id"], 40 + n, f"busy {n}"),
            )
    return str(row["id"])


# Operations that name no object of an org: lists (scoped, tested above) and the download,
# whose signed token is the credential and names its own org (a forged one is a 404, above).
NOT_ORG_OBJECTS = {("GET", "/v1/downloads/{token}")}


def _names_an_org(document: dict[str, Any], operation: dict[str, Any]) -> bool:
    """Whether the operation's JSON body has an org_id / org_ids field."""
    schema = (
        operation.get("requestBody", {})
        .get("content", {})
        .get("application/json", {})
        .get("schema", {})
    )
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return bool({"org_id", "org_ids"} & set(schema.get("properties", {})))


def test_every_operation_on_another_orgs_object_is_404(
    world: dict[str, Any], settings: Any
) -> None:
    """Driven by the served OpenAPI document, so a new route cannot be left out: every
    operation with an object id in its path, pointed at globex's object, is a 404 for acme's
    key (and the owner's key sees the object); every operation whose body names an org is a
    404 for another org."""
    import re

    globex = world["globex"]["org_id"]
    with client(world, "globex_key") as http:
        key = http.post(
            "/v1/keys",
            json={"name": "globex-404", "org_ids": [globex], "permissions": ["messages:read"]},
        )
        assert key.status_code == 201, key.text
        domain = http.post(
            "/v1/domains",
            json={
                "org_id": globex,
                "domain": f"po-{uuid.uuid4().hex[:10]}.customer.test",
                "accept_all": True,
            },
        )
        assert domain.status_code == 201, domain.text
    endpoint = _insert_endpoint(settings, globex)
    ids = {
        "message_id": world["globex"]["id"],
        "document_id": world["globex_doc"],
        "key_id": key.json()["id"],
        "endpoint_id": endpoint,
        "delivery_id": _insert_delivery(settings, endpoint, globex),
        "domain_id": domain.json()["id"],
    }
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/webhooks/endpoints/{endpoint_id}/recover"): {"since": "2020-01-01T00:00:00Z"},
        ("POST", "/v1/keys"): {
            "name": "x",
            "org_ids": [globex],
            "permissions": ["messages:read"],
        },
        ("POST", "/v1/webhooks/endpoints"): {
            "org_id": globex,
            "url": "https://receiver.example/x",
        },
        ("POST", "/v1/domains"): {
            "org_id": globex,
            "domain": f"po-{uuid.uuid4().hex[:10]}.customer.test",
            "accept_all": True,
        },
    }
    document = httpx.get(world["base"] + "/v1/openapi.json", timeout=30).json()
    tried: list[tuple[str, str]] = []
    try:
        with client(world) as http, client(world, "globex_key") as owner:
            for template, operations in document["paths"].items():
                for method, operation in operations.items():
                    method = method.upper()
                    params = re.findall(r"{(\w+)}", template)
                    if (method, template) in NOT_ORG_OBJECTS:
                        continue
                    if not params and not (method == "POST" and _names_an_org(document, operation)):
                        continue  # a list of the key's own orgs' objects
                    unknown = [name for name in params if name not in ids]
                    assert not unknown, f"{method} {template}: give this test a globex {unknown}"
                    assert not _names_an_org(document, operation) or (method, template) in bodies
                    path = template.format(**ids)
                    body = bodies.get((method, template))
                    response = http.request(method, path, json=body)
                    assert response.status_code == 404, (method, path, response.text)
                    assert response.headers["content-type"].startswith(PROBLEM)
                    if method == "GET":
                        assert owner.get(path).status_code == 200, path
                    tried.append((method, template))
            # Nothing acme's key did touched globex's objects.
            assert owner.get(f"/v1/domains/{ids['domain_id']}").status_code == 200
            assert owner.get(f"/v1/webhooks/endpoints/{endpoint}").status_code == 200
            listed = {k["id"] for k in owner.get("/v1/keys").json()["data"] if not k["revoked_at"]}
            assert ids["key_id"] in listed
    finally:
        with client(world, "globex_key") as owner:
            owner.delete(f"/v1/domains/{ids['domain_id']}")
            owner.delete(f"/v1/keys/{ids['key_id']}")
    print(f"{len(tried)} operations answered 404 for another org's objects")
    assert len(tried) >= 20


def test_endpoint_secret_rotation_disable_enable_and_delivery_attempts_over_http(
    world: dict[str, Any], stack: Any, settings: Any
) -> None:
    """The webhook operations an org needs without a shell: rotate the secret, disable and
    enable (the URL vetted again), and one delivery with every attempt."""
    acme = world["acme"]["org_id"]
    url = "https://127.0.0.1:9/hook"
    allow = {"ORDERFLOW_WEBHOOK_ALLOW": "127.0.0.1/32"}
    with api_server(stack, lambda port: allow) as allowed_base:
        allowed = httpx.Client(base_url=allowed_base, headers=bearer(world["acme_key"]), timeout=30)
        with allowed, client(world) as strict:
            made = allowed.post("/v1/webhooks/endpoints", json={"org_id": acme, "url": url})
            assert made.status_code == 201, made.text
            endpoint, first_secret = made.json()["id"], made.json()["secret"]
            try:
                rotated = allowed.post(f"/v1/webhooks/endpoints/{endpoint}/rotate-secret")
                assert rotated.status_code == 200, rotated.text
                assert rotated.json()["secret"].startswith("whsec_")
                assert rotated.json()["secret"] != first_secret
                assert rotated.json()["previous_secret_active"] is True
                shown = allowed.get(f"/v1/webhooks/endpoints/{endpoint}").json()
                assert "secret" not in shown and first_secret not in json.dumps(shown)

                disabled = allowed.post(f"/v1/webhooks/endpoints/{endpoint}/disable")
                assert disabled.status_code == 200, disabled.text
                assert disabled.json()["enabled"] is False
                assert disabled.json()["disabled_reason"].startswith("disabled through the API")
                # The server without the allow-list vets the URL again and refuses it.
                refused = strict.post(f"/v1/webhooks/endpoints/{endpoint}/enable")
                assert refused.status_code == 422
                assert refused.headers["content-type"].startswith(PROBLEM)
                assert "internal address" in refused.json()["detail"]
                enabled = allowed.post(f"/v1/webhooks/endpoints/{endpoint}/enable")
                assert enabled.status_code == 200, enabled.text
                assert enabled.json()["enabled"] is True
                assert enabled.json()["disabled_reason"] is None

                delivery = _insert_delivery(settings, endpoint, acme, attempts=3)
                detail = allowed.get(f"/v1/webhooks/deliveries/{delivery}")
                assert detail.status_code == 200, detail.text
                made_attempts = detail.json()["attempts_made"]
                assert [a["status_code"] for a in made_attempts] == [503, 503, 503]
                assert [a["duration_ms"] for a in made_attempts] == [40, 41, 42]
                assert [a["response_excerpt"] for a in made_attempts] == [
                    "busy 0",
                    "busy 1",
                    "busy 2",
                ]
                assert allowed.get(f"/v1/webhooks/deliveries/{uuid.uuid4()}").status_code == 404
                listing = f"/v1/webhooks/endpoints/{endpoint}/deliveries"

                def listed(status: str) -> list[str]:
                    found = allowed.get(listing, params={"status": status})
                    assert found.status_code == 200, found.text
                    return [row["id"] for row in found.json()["data"]]

                assert (listed("failed"), listed("pending")) == ([str(delivery)], [])
                assert allowed.get(listing, params={"status": "lost"}).status_code == 422
                # Recover the window that failed: the delivery is pending again, same id.
                window = {"since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"}
                recover = f"/v1/webhooks/endpoints/{endpoint}/recover"
                assert allowed.post(recover, json=window).json() == {"requeued": 0}
                window["until"] = "2999-01-01T00:00:00Z"
                assert allowed.post(recover, json=window).json() == {"requeued": 1}
                again = allowed.get(f"/v1/webhooks/deliveries/{delivery}").json()
                assert (again["status"], again["attempts"]) == ("pending", 0)
                assert again["webhook_id"] == detail.json()["webhook_id"]
                assert (listed("failed"), listed("pending")) == ([], [str(delivery)])
            finally:
                assert allowed.delete(f"/v1/webhooks/endpoints/{endpoint}").status_code == 204
