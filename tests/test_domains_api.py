"""Custom domains over the HTTP API (issue 13): the real `orderflow-ingest api` process, keys
made with the real CLI, and a real DNS server on loopback (tests/dns_server.py) that the API's
verify asks. One passing check verifies here (ORDERFLOW_DOMAIN_CONFIRMATIONS=1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from api_support import api_server, bearer, create_key
from dns_server import LoopbackDns
from psycopg.rows import dict_row

pytestmark = pytest.mark.stack

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def world(stack: Any, settings: Any) -> Iterator[dict[str, Any]]:
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        orgs = {
            row["slug"]: row["id"]
            for row in db.execute("SELECT slug::text AS slug, id::text AS id FROM org")
        }
    keys = {
        "acme": create_key(stack, "acme-domains", ("acme",), ("domains:manage",)),
        "globex": create_key(stack, "globex-domains", ("globex",), ("domains:manage",)),
        "reader": create_key(stack, "acme-read", ("acme",), ("messages:read",)),
    }
    with LoopbackDns() as dns:
        extra = {
            "ORDERFLOW_DNS_SERVERS": dns.server,
            "ORDERFLOW_DNS_TIMEOUT": "1",
            "ORDERFLOW_DOMAIN_CONFIRMATIONS": "1",
        }
        with api_server(stack, lambda port: extra) as base:
            yield {"base": base, "orgs": orgs, "keys": keys, "dns": dns, "db": settings}


def client(world: dict[str, Any], who: str = "acme") -> httpx.Client:
    return httpx.Client(base_url=world["base"], headers=bearer(world["keys"][who]), timeout=30)


def new_name() -> str:
    return f"po-{uuid.uuid4().hex[:10]}.customer.test"


def add(world: dict[str, Any], name: str, who: str = "acme") -> dict[str, Any]:
    with client(world, who) as http:
        response = http.post(
            "/v1/domains",
            json={"org_id": world["orgs"][who], "domain": name, "local_parts": ["Orders"]},
        )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_add_verify_and_remove_a_domain(world: dict[str, Any]) -> None:
    name = new_name()
    created = add(world, name.upper() + ".")
    assert created["domain"] == name
    assert created["state"] == "pending"
    assert created["local_parts"] == ["orders"]
    assert created["txt_name"] == f"_orderflow.{name}"
    assert created["txt_value"].startswith("orderflow-verify=")
    assert len(created["txt_value"]) > len("orderflow-verify=") + 20
    assert created["mx_hosts"]

    with client(world) as http:
        # Nothing published yet: a conclusive failing check, still pending.
        checked = http.post(f"/v1/domains/{created['id']}/verify")
        assert checked.status_code == 200, checked.text
        assert checked.json()["state"] == "pending"
        assert checked.json()["event"] is None
        assert checked.json()["last_result"]["txt"] == "no"

        dns: LoopbackDns = world["dns"]
        dns.txt(created["txt_name"], created["txt_value"])
        for host in created["mx_hosts"]:
            dns.mx(name, 10, host)
        checked = http.post(f"/v1/domains/{created['id']}/verify")
        assert checked.status_code == 200, checked.text
        body = checked.json()
        assert (body["state"], body["event"], body["previous_state"]) == (
            "verified",
            "domain.verified",
            "pending",
        )
        assert body["verified_at"] is not None
        assert body["last_result"]["mx"] == "yes"

        listed = http.get("/v1/domains").json()["data"]
        assert [(d["domain"], d["state"]) for d in listed if d["id"] == created["id"]] == [
            (name, "verified")
        ]
        assert http.get(f"/v1/domains/{created['id']}").json()["state"] == "verified"

        assert http.delete(f"/v1/domains/{created['id']}").status_code == 204
        gone = http.get(f"/v1/domains/{created['id']}")
        assert gone.status_code == 404
        assert gone.headers["content-type"].startswith(PROBLEM)
        assert created["id"] not in {d["id"] for d in http.get("/v1/domains").json()["data"]}
        assert http.delete(f"/v1/domains/{created['id']}").status_code == 404

    # The store's remove: the row stays, with removed_at; the name may be registered again.
    with psycopg.connect(world["db"].database_url, row_factory=dict_row) as db:
        row = db.execute(
            "SELECT removed_at FROM custom_domain WHERE id = %s", (created["id"],)
        ).fetchone()
    assert row is not None and row["removed_at"] is not None
    assert add(world, name)["id"] != created["id"]


def test_another_orgs_domain_is_a_404(world: dict[str, Any]) -> None:
    theirs = add(world, new_name(), who="globex")
    with client(world, "acme") as http:
        for method, path in (
            ("GET", f"/v1/domains/{theirs['id']}"),
            ("POST", f"/v1/domains/{theirs['id']}/verify"),
            ("DELETE", f"/v1/domains/{theirs['id']}"),
        ):
            response = http.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
        assert theirs["id"] not in {d["id"] for d in http.get("/v1/domains").json()["data"]}
        # Nor can it add a domain for an org outside the key.
        response = http.post(
            "/v1/domains",
            json={"org_id": world["orgs"]["globex"], "domain": new_name(), "accept_all": True},
        )
        assert response.status_code == 404
    with client(world, "globex") as http:
        assert http.get(f"/v1/domains/{theirs['id']}").json()["state"] == "pending"


def test_a_key_without_the_permission_is_refused(world: dict[str, Any]) -> None:
    theirs = add(world, new_name())
    with client(world, "reader") as http:
        assert http.get("/v1/domains").status_code == 403
        assert http.get(f"/v1/domains/{theirs['id']}").status_code == 403
        assert http.delete(f"/v1/domains/{theirs['id']}").status_code == 403
        response = http.post(
            "/v1/domains",
            json={"org_id": world["orgs"]["acme"], "domain": new_name(), "accept_all": True},
        )
        assert response.status_code == 403
        assert "domains:manage" in response.json()["detail"]
    with httpx.Client(base_url=world["base"], timeout=30) as anonymous:
        assert anonymous.get("/v1/domains").status_code == 401


@pytest.mark.parametrize(
    ("domain", "local_parts", "accept_all", "says"),
    [
        ("not a domain", ["orders"], False, "is not a domain name"),
        ("-bad-.example.com", ["orders"], False, "is not a domain name"),
        ("nodot", ["orders"], False, "is not a domain name"),
        ("po.customer.test", ["orders+x"], False, "is not a local part"),
        ("po2.customer.test", [], False, "local parts"),
    ],
)
def test_invalid_requests_are_a_clear_422(
    world: dict[str, Any], domain: str, local_parts: list[str], accept_all: bool, says: str
) -> None:
    with client(world) as http:
        response = http.post(
            "/v1/domains",
            json={
                "org_id": world["orgs"]["acme"],
                "domain": domain,
                "local_parts": local_parts,
                "accept_all": accept_all,
            },
        )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert says in response.json()["detail"]


def test_an_ingest_domain_is_a_422_and_a_taken_domain_a_409(
    world: dict[str, Any], settings: Any
) -> None:
    with client(world) as http:
        response = http.post(
            "/v1/domains",
            json={
                "org_id": world["orgs"]["acme"],
                "domain": settings.ingest_domains[0],
                "accept_all": True,
            },
        )
        assert response.status_code == 422
        assert "ingest domain" in response.json()["detail"]
    name = new_name()
    add(world, name, who="globex")
    with client(world) as http:
        response = http.post(
            "/v1/domains",
            json={"org_id": world["orgs"]["acme"], "domain": name, "accept_all": True},
        )
    assert response.status_code == 409
    assert "already registered" in response.json()["detail"]
