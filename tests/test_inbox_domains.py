"""The inbox's Domains page (issue 13) over HTTP: the real API+inbox process, users signed in
through the real magic link, a real DNS server on loopback for "Check now". The page calls the
API's domain routes, so these check what the page adds: admin only, org scoping, CSRF."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from dns_server import LoopbackDns
from inbox_support import CSRF_FIELD, add_user, form_field, inbox_server, sign_in, smtp_sink
from psycopg.rows import dict_row

pytestmark = pytest.mark.stack

ADMIN = "dora@acme.test"
OPERATOR = "otto@acme.test"
GLOBEX_ADMIN = "gina@globex.test"
ROW = re.compile(r'<tr id="domain-([0-9a-f-]{36})">')
TXT = re.compile(r"(_orderflow\.[a-z0-9.-]+)\.  TXT  \"(orderflow-verify=[A-Za-z0-9_-]+)\"")


@pytest.fixture(scope="module")
def world(stack: Any, settings: Any) -> Iterator[dict[str, Any]]:
    add_user(stack, ADMIN, "acme:admin")
    add_user(stack, OPERATOR, "acme:operator")
    add_user(stack, GLOBEX_ADMIN, "globex:admin")
    with LoopbackDns() as dns, smtp_sink() as sink:
        extra = {
            "ORDERFLOW_DNS_SERVERS": dns.server,
            "ORDERFLOW_DNS_TIMEOUT": "1",
            "ORDERFLOW_DOMAIN_CONFIRMATIONS": "1",
        }
        with inbox_server(stack, sink, extra) as base:
            yield {
                "base": base,
                "sink": sink,
                "dns": dns,
                "redis_url": settings.redis_url,
                "database_url": settings.database_url,
            }


@contextmanager
def signed_in(world: dict[str, Any], who: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world["base"], timeout=30) as http:
        sign_in(http, world["sink"], who, world["redis_url"])
        yield http


def new_name() -> str:
    return f"po-{uuid.uuid4().hex[:10]}.customer.test"


def add(http: httpx.Client, slug: str, name: str) -> tuple[httpx.Response, str]:
    csrf = form_field(CSRF_FIELD, http.get(f"/inbox/o/{slug}/domains").text)
    response = http.post(
        f"/inbox/o/{slug}/domains", data={"domain": name, "local_parts": "orders", "csrf": csrf}
    )
    return response, csrf


def domain_id(world: dict[str, Any], name: str) -> str | None:
    with psycopg.connect(world["database_url"], row_factory=dict_row) as db:
        row = db.execute(
            "SELECT id::text AS id FROM custom_domain WHERE domain = %s AND removed_at IS NULL",
            (name,),
        ).fetchone()
    return str(row["id"]) if row else None


def test_admin_adds_checks_and_removes_a_domain(world: dict[str, Any]) -> None:
    name = new_name()
    with signed_in(world, ADMIN) as http:
        assert 'href="/inbox/o/acme/domains"' in http.get("/inbox/o/acme").text
        created, csrf = add(http, "acme", name)
        assert created.status_code == 200, created.text
        txt = TXT.search(created.text)
        assert txt is not None and txt.group(1) == f"_orderflow.{name}"
        assert f"{name}.  MX  10 mx.orderflow.test." in created.text
        # Other tests of the session may have left acme domains on the page: find ours.
        row_id = domain_id(world, name)
        assert row_id is not None and row_id in ROW.findall(created.text)
        assert "pending" in created.text

        dns: LoopbackDns = world["dns"]
        dns.txt(txt.group(1), txt.group(2))
        dns.mx(name, 10, "mx.orderflow.test")
        checked = http.post(f"/inbox/o/acme/domains/{row_id}/verify", data={"csrf": csrf})
        assert checked.status_code == 200, checked.text
        assert "domain.verified: pending &rarr; verified" in checked.text
        assert '<span class="badge parsed">verified: receiving</span>' in checked.text

        removed = http.post(f"/inbox/o/acme/domains/{row_id}/remove", data={"csrf": csrf})
        assert removed.status_code == 303
        assert removed.headers["location"] == "/inbox/o/acme/domains?done=remove"
        assert name not in http.get("/inbox/o/acme/domains").text
    assert domain_id(world, name) is None


def test_a_refused_name_is_explained_on_the_page(world: dict[str, Any]) -> None:
    with signed_in(world, ADMIN) as http:
        response, _ = add(http, "acme", "not a domain")
    assert response.status_code == 400
    assert "is not a domain name" in response.text
    assert 'aria-invalid="true"' in response.text


def test_forms_without_the_csrf_token_are_refused(world: dict[str, Any]) -> None:
    name = new_name()
    with signed_in(world, ADMIN) as http:
        page = http.get("/inbox/o/acme/domains").text
        refused = http.post(
            "/inbox/o/acme/domains", data={"domain": name, "local_parts": "orders", "csrf": ""}
        )
        assert refused.status_code == 403
        assert domain_id(world, name) is None
        add(http, "acme", name)
        row_id = domain_id(world, name)
        assert row_id is not None and form_field(CSRF_FIELD, page)
        for action in ("verify", "remove"):
            target = f"/inbox/o/acme/domains/{row_id}/{action}"
            assert http.post(target, data={"csrf": "x" * 43}).status_code == 403
    assert domain_id(world, name) == row_id


def test_the_page_is_for_admins_of_the_org_only(world: dict[str, Any]) -> None:
    name = new_name()
    with signed_in(world, ADMIN) as http:
        add(http, "acme", name)
        csrf = form_field(CSRF_FIELD, http.get("/inbox/o/acme/domains").text)
        assert http.get("/inbox/o/globex/domains").status_code == 404
    row_id = domain_id(world, name)
    assert row_id is not None
    with signed_in(world, OPERATOR) as http:
        assert 'href="/inbox/o/acme/domains"' not in http.get("/inbox/o/acme").text
        assert http.get("/inbox/o/acme/domains").status_code == 403
        csrf = form_field(CSRF_FIELD, http.get("/inbox/o/acme").text)
        assert (
            http.post(f"/inbox/o/acme/domains/{row_id}/remove", data={"csrf": csrf}).status_code
            == 403
        )
        refused = http.post(
            "/inbox/o/acme/domains", data={"domain": new_name(), "accept_all": "on", "csrf": csrf}
        )
        assert refused.status_code == 403
    with signed_in(world, GLOBEX_ADMIN) as http:
        page = http.get("/inbox/o/globex/domains")
        assert page.status_code == 200 and name not in page.text
        csrf = form_field(CSRF_FIELD, page.text)
        for action in ("verify", "remove"):
            # acme's domain through globex's page: not there, like an id that does not exist
            target = f"/inbox/o/globex/domains/{row_id}/{action}"
            assert http.post(target, data={"csrf": csrf}).status_code == 404, action
        assert (
            http.post(f"/inbox/o/acme/domains/{row_id}/remove", data={"csrf": csrf}).status_code
            == 404
        )
    assert domain_id(world, name) == row_id
