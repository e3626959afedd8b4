"""The web inbox over HTTP, against the real `orderflow-ingest api` process: sign-in by magic
link, sessions, CSRF, security headers, scoping to the user's orgs, downloads through the API's
signed links, reprocess by role. (tests/test_inbox_browser.py drives the same in Chromium.)"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from conftest import send_mail
from inbox_support import (
    CSRF_FIELD,
    TOKEN_FIELD,
    WEBHOOKS_ON_LOOPBACK,
    add_user,
    clear_rate_limits,
    form_field,
    inbox_server,
    sign_in,
    smtp_sink,
)
from ops_support import cli, cli_json, run_worker, wait_status
from psycopg.rows import dict_row
from samples import address, minimal_pdf, order_email
from support_wait import wait_for
from webhook_receiver import Receiver
from webhook_support import (
    add_endpoint,
    drop_endpoints,
    record_events,
    running_dispatcher,
    webhook_settings,
)

pytestmark = pytest.mark.stack

OPERATOR = "ana@acme.test"
VIEWER = "vic@acme.test"
GLOBEX = "gus@globex.test"
ADMIN = "ada@acme.test"
SECRET = re.compile(r'id="secret">(ofi_live_[0-9A-Za-z]+)<')
WEBHOOK_SECRET = re.compile(r'id="secret">(whsec_[0-9A-Za-z+/=]+)<')
ENDPOINT_LINK = re.compile(r'href="/inbox/o/acme/webhooks/([0-9a-f-]{36})"')


@pytest.fixture(scope="module")
def world(stack: Any, settings: Any) -> Iterator[dict[str, Any]]:
    """A parsed order in acme and one in globex, users of each role, the API+inbox running."""
    acme_msg = order_email(
        subject="<script>alert(1)</script> PO 7781",
        attachments=[("PO-7781.pdf", "application/pdf", minimal_pdf())],
    )
    globex_msg = order_email(
        to=address("globex"), attachments=[("PO-9.pdf", "application/pdf", minimal_pdf())]
    )
    send_mail(stack, acme_msg, [address("acme")])
    send_mail(stack, globex_msg, [address("globex")])
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        wait_status(db, acme_msg["Message-ID"], ("STORED",))
        wait_status(db, globex_msg["Message-ID"], ("STORED",), slug="globex")
        run_worker(stack)
        acme = wait_status(db, acme_msg["Message-ID"], ("PARSED",))
        globex = wait_status(db, globex_msg["Message-ID"], ("PARSED",), slug="globex")
        docs = {
            row["inbound_message_id"]: row
            for row in db.execute(
                "SELECT id::text AS id, inbound_message_id::text AS inbound_message_id,"
                " storage_key FROM document WHERE inbound_message_id = ANY(%s::uuid[])",
                ([str(acme["id"]), str(globex["id"])],),
            ).fetchall()
        }
    add_user(stack, OPERATOR, "acme:operator")
    add_user(stack, VIEWER, "acme:viewer")
    add_user(stack, GLOBEX, "globex:operator")
    add_user(stack, ADMIN, "acme:admin")
    with smtp_sink() as sink, inbox_server(stack, sink, WEBHOOKS_ON_LOOPBACK) as base:
        yield {
            "base": base,
            "sink": sink,
            "acme": acme,
            "globex": globex,
            "acme_doc": docs[str(acme["id"])],
            "globex_doc": docs[str(globex["id"])],
            "redis_url": settings.redis_url,
        }


def browser(world: dict[str, Any]) -> httpx.Client:
    return httpx.Client(base_url=world["base"], timeout=30)


@contextmanager
def signed_in(world: dict[str, Any], who: str) -> Iterator[httpx.Client]:
    with browser(world) as http:
        sign_in(http, world["sink"], who, world["redis_url"])
        yield http


def ask_link(http: httpx.Client, who: str) -> httpx.Response:
    page = http.get("/inbox/signin")
    return http.post(
        "/inbox/signin", data={"email": who, "csrf": form_field(CSRF_FIELD, page.text)}
    )


def token_rows(db: Any) -> int:
    return int(db.execute("SELECT count(*) AS n FROM inbox_login_token").fetchone()["n"])


def test_user_cli_add_list_disable(stack: Any, world: dict[str, Any]) -> None:
    code, user = cli_json(stack, "user", "add", "temp@acme.test", "--org", "acme:admin")
    assert code == 0 and user["orgs"][0]["role"] == "admin"
    code, listed = cli_json(stack, "user", "list")
    roles = {u["email"]: [m["role"] for m in u["orgs"]] for u in listed}
    assert roles[OPERATOR] == ["operator"] and roles[VIEWER] == ["viewer"]
    bad = cli(stack, "user", "add", "x@acme.test", "--org", "acme:owner")
    assert bad.returncode == 2 and "unknown role" in bad.stderr
    with signed_in(world, "temp@acme.test") as http:
        assert http.get("/inbox/o/acme").status_code == 200
        code, disabled = cli_json(stack, "user", "disable", "temp@acme.test")
        assert code == 0 and disabled["disabled_at"]
        after = http.get("/inbox/o/acme")
    assert after.status_code == 303 and after.headers["location"] == "/inbox/signin"


def test_signin_request_answers_the_same_and_does_the_same_work_for_unknown_addresses(
    world: dict[str, Any], db: Any
) -> None:
    clear_rate_limits(world["redis_url"])
    with browser(world) as http:
        before = token_rows(db)
        known = ask_link(http, OPERATOR)
        middle = token_rows(db)
        unknown = ask_link(http, "nobody@nowhere.test")
        after = token_rows(db)
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text
    assert "If that address has an account" in known.text
    # The same statements either way: one token row each (the unknown one can never sign in).
    assert (middle - before, after - middle) == (1, 1)
    assert world["sink"].for_address("nobody@nowhere.test") == []


def test_signin_link_is_random_hashed_single_use_and_get_does_not_sign_in(
    world: dict[str, Any], db: Any
) -> None:
    clear_rate_limits(world["redis_url"])
    sink = world["sink"]
    with browser(world) as http:
        seen = len(sink.for_address(OPERATOR))
        ask_link(http, OPERATOR)
        link = sink.wait_link(OPERATOR, seen)
        token = link.rsplit("/", 1)[1]
        assert len(token) >= 43
        stored = db.execute(
            "SELECT token_sha256, expires_at - created_at AS ttl FROM inbox_login_token"
            " WHERE token_sha256 = %s",
            (hashlib.sha256(token.encode()).hexdigest(),),
        ).fetchone()
        assert stored is not None and stored["ttl"].total_seconds() <= 900
        assert (
            db.execute(
                "SELECT 1 FROM inbox_login_token WHERE token_sha256 = %s", (token,)
            ).fetchone()
            is None
        )
        path = httpx.URL(link).raw_path.decode()
        for _ in range(2):  # a link scanner's GETs: a confirm page, no session
            confirm = http.get(path)
            assert confirm.status_code == 200 and "Sign in" in confirm.text
            assert "ofi_inbox_session" not in confirm.headers.get("set-cookie", "")
        assert http.get("/inbox/o/acme").status_code == 303
        form = {
            "token": form_field(TOKEN_FIELD, confirm.text),
            "csrf": form_field(CSRF_FIELD, confirm.text),
        }
        first = http.post("/inbox/signin/link", data=form)
        assert first.status_code == 303 and "ofi_inbox_session=" in first.headers["set-cookie"]
        assert http.get("/inbox/o/acme").status_code == 200
    with browser(world) as other:
        page = other.get(path)
        assert "already used or has expired" in page.text
        csrf = form_field(CSRF_FIELD, other.get("/inbox/signin").text)
        again = other.post("/inbox/signin/link", data={"token": token, "csrf": csrf})
        assert again.status_code == 400


def test_signin_link_expires(world: dict[str, Any], db: Any) -> None:
    clear_rate_limits(world["redis_url"])
    sink = world["sink"]
    with browser(world) as http:
        seen = len(sink.for_address(VIEWER))
        ask_link(http, VIEWER)
        token = sink.wait_link(VIEWER, seen).rsplit("/", 1)[1]
        db.execute(
            "UPDATE inbox_login_token SET expires_at = now() - interval '1 second'"
            " WHERE token_sha256 = %s",
            (hashlib.sha256(token.encode()).hexdigest(),),
        )
        page = http.get(f"/inbox/signin/link/{token}")
        assert "already used or has expired" in page.text
        csrf = form_field(CSRF_FIELD, http.get("/inbox/signin").text)
        response = http.post("/inbox/signin/link", data={"token": token, "csrf": csrf})
        assert response.status_code == 400


def test_signin_is_rate_limited_by_address_and_by_client(world: dict[str, Any]) -> None:
    clear_rate_limits(world["redis_url"])
    with browser(world) as http:
        answers = [ask_link(http, "flood@acme.test").status_code for _ in range(6)]
        assert answers == [200] * 5 + [429]
        clear_rate_limits(world["redis_url"])
        answers = [ask_link(http, f"many{n}@acme.test").status_code for n in range(31)]
        assert answers == [200] * 30 + [429]
    clear_rate_limits(world["redis_url"])


def test_session_cookie_is_httponly_samesite_lax_scoped_to_inbox(world: dict[str, Any]) -> None:
    clear_rate_limits(world["redis_url"])
    sink = world["sink"]
    with browser(world) as http:
        seen = len(sink.for_address(OPERATOR))
        ask_link(http, OPERATOR)
        page = http.get(httpx.URL(sink.wait_link(OPERATOR, seen)).raw_path.decode())
        response = http.post(
            "/inbox/signin/link",
            data={
                "token": form_field(TOKEN_FIELD, page.text),
                "csrf": form_field(CSRF_FIELD, page.text),
            },
        )
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("ofi_inbox_session=")
    )
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path"} <= attributes
    assert "samesite=lax" in cookie.lower() and "path=/inbox" in cookie.lower()
    # This server runs with ORDERFLOW_INBOX_COOKIE_SECURE=false (plain-HTTP test stack);
    # test_inbox_units proves the default marks it Secure.
    assert "secure" not in attributes


def test_every_inbox_page_sends_nonce_csp_and_framing_and_referrer_headers(
    world: dict[str, Any],
) -> None:
    with signed_in(world, OPERATOR) as http:
        pages = [
            "/inbox/signin",
            "/inbox/o/acme",
            f"/inbox/o/acme/messages/{world['acme']['id']}",
            "/inbox/o/acme/events",
            "/inbox/o/globex",
        ]
        for path in pages:
            response = http.get(path)
            policy = response.headers["content-security-policy"]
            assert re.search(r"script-src 'nonce-[A-Za-z0-9_-]{16,}'", policy), path
            assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["x-frame-options"] == "DENY"
            # The only script is the poll's own file, allowed by this response's nonce;
            # nothing inline (no code between tags, no on... handlers).
            nonce = re.search(r"'nonce-([A-Za-z0-9_-]+)'", policy).group(1)  # type: ignore[union-attr]
            for tag, body in re.findall(r"(<script[^>]*>)(.*?)</script>", response.text, re.S):
                assert f'nonce="{nonce}"' in tag and 'src="/inbox/static/' in tag, tag
                assert body.strip() == ""
            assert not re.search(r"<[^>]*\son[a-z]+\s*=", response.text), path


def test_message_page_shows_the_order_and_never_live_html(world: dict[str, Any]) -> None:
    with signed_in(world, OPERATOR) as http:
        page = http.get(f"/inbox/o/acme/messages/{world['acme']['id']}")
    assert page.status_code == 200
    text = page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; PO 7781" in text
    assert "<script>alert(1)" not in text
    for expected in (
        "PO-7781.pdf",
        "application/pdf",
        "Postfix queue id",
        "Timeline",
        "Sender authentication",
    ):
        assert expected in text
    assert world["acme"]["sha256"] in text


def test_forms_without_the_csrf_token_are_refused(world: dict[str, Any]) -> None:
    target = f"/inbox/o/acme/messages/{world['acme']['id']}/reprocess"
    with signed_in(world, OPERATOR) as http:
        assert http.post(target).status_code == 403
        assert http.post(target, data={"csrf": "x" * 43}).status_code == 403
        assert http.post("/inbox/signout", data={"csrf": ""}).status_code == 403
    with browser(world) as anonymous:
        assert anonymous.post("/inbox/signin", data={"email": OPERATOR}).status_code == 403


def test_user_of_org_a_gets_404_for_every_page_and_download_of_org_b(
    world: dict[str, Any],
) -> None:
    other_id, other_doc = world["globex"]["id"], world["globex_doc"]["id"]
    gets = [
        f"/inbox/o/acme/messages/{other_id}",
        f"/inbox/o/acme/messages/{other_id}/eml",
        f"/inbox/o/acme/documents/{other_doc}/download",
        "/inbox/o/globex",
        "/inbox/o/globex/events",
        f"/inbox/o/globex/messages/{other_id}",
        f"/inbox/o/globex/messages/{other_id}/eml",
        f"/inbox/o/globex/documents/{other_doc}/download",
        "/inbox/o/acme/messages/not-a-uuid",
    ]
    with signed_in(world, OPERATOR) as http:
        csrf = form_field(CSRF_FIELD, http.get("/inbox/o/acme").text)
        for path in gets:
            assert http.get(path).status_code == 404, path
        for path in (
            f"/inbox/o/acme/messages/{other_id}/reprocess",
            f"/inbox/o/globex/messages/{other_id}/reprocess",
        ):
            assert http.post(path, data={"csrf": csrf}).status_code == 404, path
        # and the same ids are there for globex's own user
    with signed_in(world, GLOBEX) as globex:
        assert globex.get(f"/inbox/o/globex/messages/{other_id}").status_code == 200
        assert globex.get(f"/inbox/o/acme/messages/{world['acme']['id']}").status_code == 404


def test_downloads_go_through_short_lived_signed_links_as_attachments(
    world: dict[str, Any], s3: Any, settings: Any
) -> None:
    def stored(key: str) -> str:
        body = s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        return hashlib.sha256(body).hexdigest()

    with signed_in(world, VIEWER) as http:
        for path, key in (
            (f"/inbox/o/acme/messages/{world['acme']['id']}/eml", world["acme"]["raw_storage_key"]),
            (
                f"/inbox/o/acme/documents/{world['acme_doc']['id']}/download",
                world["acme_doc"]["storage_key"],
            ),
        ):
            redirect = http.get(path)
            assert redirect.status_code == 303
            assert redirect.headers["location"].startswith("/v1/downloads/")
            file = http.get(redirect.headers["location"])
            assert file.status_code == 200
            assert file.headers["content-disposition"].startswith("attachment;")
            assert hashlib.sha256(file.content).hexdigest() == stored(key)
    with browser(world) as anonymous:
        assert (
            anonymous.get(f"/inbox/o/acme/messages/{world['acme']['id']}/eml").headers["location"]
            == "/inbox/signin"
        )


def test_search_finds_by_filename_negates_and_explains_mistakes(world: dict[str, Any]) -> None:
    subject_link = f"/inbox/o/acme/messages/{world['acme']['id']}"
    with signed_in(world, VIEWER) as http:

        def search(q: str) -> httpx.Response:
            return http.get("/inbox/o/acme", params={"q": q})

        assert subject_link in search("filename:PO-7781.pdf").text
        assert subject_link in search('has:document subject:"PO 7781" status:parsed').text
        assert subject_link not in search("-filename:PO-7781").text
        assert subject_link not in search("filename:PO-9.pdf").text  # globex's, not ours
        wrong = search('subject:"open')
        assert wrong.status_code == 400 and "quoted phrase is not closed" in wrong.text
        wrong = search("colour:red")
        assert wrong.status_code == 400 and "unknown filter colour:" in wrong.text


def test_operator_reprocesses_and_viewer_is_refused(world: dict[str, Any], db: Any) -> None:
    message = f"/inbox/o/acme/messages/{world['acme']['id']}"
    with signed_in(world, VIEWER) as viewer:
        page = viewer.get(message).text
        assert "Reprocess</button>" not in page
        refused = viewer.post(f"{message}/reprocess", data={"csrf": form_field(CSRF_FIELD, page)})
        assert refused.status_code == 403 and "viewer" in refused.text
    with signed_in(world, OPERATOR) as operator:
        page = operator.get(message).text
        done = operator.post(f"{message}/reprocess", data={"csrf": form_field(CSRF_FIELD, page)})
        assert done.status_code == 303 and done.headers["location"].endswith("?done=reprocess")
        status = db.execute(
            "SELECT status FROM inbound_message WHERE id = %s", (world["acme"]["id"],)
        ).fetchone()["status"]
        assert status == "STORED"
        assert "message.reprocessed" in str(
            db.execute(
                "SELECT array_agg(type) AS t FROM event WHERE inbound_message_id = %s",
                (world["acme"]["id"],),
            ).fetchone()["t"]
        )


def test_user_link_cli_prints_a_single_use_sign_in_link(stack: Any, world: dict[str, Any]) -> None:
    public = {"ORDERFLOW_INBOX_PUBLIC_URL": f"{world['base']}/inbox"}
    result = cli(stack, "user", "link", VIEWER, env=public)
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    assert link.startswith(f"{world['base']}/inbox/signin/link/")
    with browser(world) as http:
        page = http.get(httpx.URL(link).raw_path.decode())
        form = {
            "token": form_field(TOKEN_FIELD, page.text),
            "csrf": form_field(CSRF_FIELD, page.text),
        }
        assert http.post("/inbox/signin/link", data=form).status_code == 303
        assert http.get("/inbox/o/acme").status_code == 200
    with browser(world) as other:
        csrf = form_field(CSRF_FIELD, other.get("/inbox/signin").text)
        replay = other.post("/inbox/signin/link", data={"token": form["token"], "csrf": csrf})
        assert replay.status_code == 400
    missing = cli(stack, "user", "link", "nobody@nowhere.test")
    assert missing.returncode == 1 and "no active user" in missing.stderr


def test_org_admin_creates_a_key_shown_once_and_revokes_it(
    stack: Any, world: dict[str, Any]
) -> None:
    with signed_in(world, ADMIN) as http:
        page = http.get("/inbox/o/acme/keys")
        assert page.status_code == 200
        created = http.post(
            "/inbox/o/acme/keys",
            data={
                "name": "erp-from-inbox",
                "permission": ["messages:read", "raw:read"],
                "csrf": form_field(CSRF_FIELD, page.text),
            },
        )
        assert created.status_code == 200
        secret = form_field(SECRET, created.text)
        listing = http.get("/inbox/o/acme/keys").text
        assert "erp-from-inbox" in listing and secret not in listing
        api = {"Authorization": f"Bearer {secret}"}
        messages = http.get("/v1/messages", headers=api)
        assert messages.status_code == 200
        assert {m["org_id"] for m in messages.json()["data"]} == {str(world["acme"]["org_id"])}
        _, listed = cli_json(stack, "key", "list")
        mine = [k for k in listed if k["name"] == "erp-from-inbox"]
        assert len(mine) == 1, mine
        key_id = mine[0]["id"]
        assert http.get(f"/v1/messages/{world['globex']['id']}", headers=api).status_code == 404
        revoke = http.post(
            f"/inbox/o/acme/keys/{key_id}/revoke", data={"csrf": form_field(CSRF_FIELD, listing)}
        )
        assert revoke.status_code == 303
        assert http.get("/v1/messages", headers=api).status_code == 401


def test_keys_page_is_for_org_admins_only_and_scoped(stack: Any, world: dict[str, Any]) -> None:
    code, created = cli_json(
        stack, "key", "create", "globex-only", "--org", "globex", "-p", "messages:read"
    )
    assert code == 0
    with signed_in(world, OPERATOR) as http:
        assert http.get("/inbox/o/acme/keys").status_code == 403
    with signed_in(world, ADMIN) as http:
        page = http.get("/inbox/o/acme/keys")
        assert "globex-only" not in page.text
        assert http.get("/inbox/o/globex/keys").status_code == 404
        revoke = http.post(
            f"/inbox/o/acme/keys/{created['id']}/revoke",
            data={"csrf": form_field(CSRF_FIELD, page.text)},
        )
        assert revoke.status_code == 404


def test_platform_admin_sees_every_org(stack: Any, world: dict[str, Any]) -> None:
    result = cli(stack, "user", "add", "staff@orderflow.test", "--platform-admin")
    assert result.returncode == 0, result.stderr
    with signed_in(world, "staff@orderflow.test") as http:
        home = http.get("/inbox/")
        assert home.status_code == 200
        assert 'href="/inbox/o/acme"' in home.text and 'href="/inbox/o/globex"' in home.text
        other = http.get(f"/inbox/o/globex/messages/{world['globex']['id']}")
        assert other.status_code == 200


def test_message_page_links_message_id_conflicts(
    stack: Any, world: dict[str, Any], db: Any
) -> None:
    message_id = f"<conflict-{uuid.uuid4().hex}@customer.example>"
    first = order_email(message_id=message_id, body="First version of the order.\n")
    second = order_email(message_id=message_id, body="Another order, same Message-ID.\n")
    for message in (first, second):
        send_mail(stack, message, [address("acme")])

    def both() -> list[dict[str, Any]] | None:
        rows = db.execute(
            "SELECT id::text AS id, conflict_of::text AS conflict_of FROM inbound_message"
            " WHERE message_id = %s ORDER BY received_at",
            (message_id,),
        ).fetchall()
        return rows if len(rows) == 2 else None

    rows = wait_for(both, 60, "two messages with one Message-ID")
    original = next(row for row in rows if row["conflict_of"] is None)
    copy = next(row for row in rows if row["conflict_of"] is not None)
    with signed_in(world, VIEWER) as http:
        page = http.get(f"/inbox/o/acme/messages/{copy['id']}").text
        assert "Same Message-ID, other content" in page
        assert f'href="/inbox/o/acme/messages/{original["id"]}"' in page
        back = http.get(f"/inbox/o/acme/messages/{original['id']}").text
        assert f'href="/inbox/o/acme/messages/{copy["id"]}"' in back


def test_inbox_pages_newest_first_by_cursor_without_repeats(
    stack: Any, world: dict[str, Any], db: Any
) -> None:
    slug = f"paging-{uuid.uuid4().hex[:6]}"
    assert cli(stack, "org", "add", slug, "--name", "Paging Co").returncode == 0
    org_id = db.execute("SELECT id::text AS id FROM org WHERE slug = %s", (slug,)).fetchone()["id"]
    for n in range(57):  # same received_at for some: the id breaks the tie
        db.execute(
            "INSERT INTO inbound_message (org_id, source, source_message_id, subject,"
            " received_at, status, trace_id) VALUES (%s, 'EMAIL', %s, %s,"
            " now() - make_interval(mins => %s), 'RECEIVED', %s)",
            (org_id, f"<page-{n}@x.example>", f"paging subject {n:02d}", n // 3, f"t{n}"),
        )
    add_user(stack, f"pat@{slug}.test", f"{slug}:viewer")
    with signed_in(world, f"pat@{slug}.test") as http:
        first = http.get(f"/inbox/o/{slug}")
        subjects = re.findall(r"paging subject (\d\d)", first.text)
        older = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert older is not None and len(subjects) == 50
        second = http.get(older.group(1).replace("&amp;", "&"))
        rest = re.findall(r"paging subject (\d\d)", second.text)
        assert 'rel="next"' not in second.text
    seen = [int(s) for s in subjects + rest]
    assert len(seen) == 57 and set(seen) == set(range(57))
    assert [n // 3 for n in seen] == sorted(n // 3 for n in seen)  # newest first


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_org_admin_adds_a_webhook_sees_its_deliveries_and_redelivers(
    stack: Any, world: dict[str, Any], db: Any, receiver: Receiver
) -> None:
    from standardwebhooks import Webhook

    wh = webhook_settings(stack)
    acme_org = str(world["acme"]["org_id"])
    try:
        with signed_in(world, ADMIN) as http:
            page = http.get("/inbox/o/acme/webhooks")
            assert page.status_code == 200 and "No endpoints yet" in page.text
            csrf = form_field(CSRF_FIELD, page.text)

            def endpoint_rows() -> int:
                # Every row, deleted ones too: other tests of the session may have left some.
                return int(
                    db.execute(
                        "SELECT count(*) AS n FROM webhook_endpoint WHERE org_id = %s",
                        (acme_org,),
                    ).fetchone()["n"]
                )

            before = endpoint_rows()
            # The API's create vets the URL (webhooks/ssrf.py): cloud metadata stays refused.
            for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook"):
                refused = http.post("/inbox/o/acme/webhooks", data={"url": url, "csrf": csrf})
                assert refused.status_code == 400 and "Refused:" in refused.text, url
            assert endpoint_rows() == before
            created = http.post(
                "/inbox/o/acme/webhooks",
                data={
                    "url": receiver.url("/acme-hook"),
                    "event_types": "message.parsed",
                    "description": "ERP <intake>",
                    "csrf": csrf,
                },
            )
            assert created.status_code == 200, created.text
            secret = form_field(WEBHOOK_SECRET, created.text)
            endpoint_id = form_field(ENDPOINT_LINK, created.text)
            listing = http.get("/inbox/o/acme/webhooks").text
            assert receiver.url("/acme-hook") in listing and secret not in listing
            assert "ERP &lt;intake&gt;" in listing and "no deliveries yet" in listing

            with running_dispatcher(wh):
                [event_id] = record_events(wh, acme_org, 1, "message.parsed")
                wait_for(lambda: receiver.requests, 30, "the first delivery")
                first = receiver.requests[0]
                body = Webhook(secret).verify(first.body, first.headers)
                assert body["id"] == f"evt_{event_id}"

                def delivered() -> dict[str, Any] | None:
                    row = db.execute(
                        "SELECT id::text AS id, status FROM webhook_delivery"
                        " WHERE endpoint_id = %s",
                        (endpoint_id,),
                    ).fetchone()
                    return row if row and row["status"] == "delivered" else None

                delivery = wait_for(delivered, 30, "the delivery marked delivered")
                detail = http.get(f"/inbox/o/acme/webhooks/{endpoint_id}").text
                for expected in ("message.parsed", f"evt_{event_id}", "HTTP 200", "delivered"):
                    assert expected in detail, expected
                assert "healthy" in detail
                again = http.post(
                    f"/inbox/o/acme/webhooks/deliveries/{delivery['id']}/redeliver",
                    data={"csrf": csrf},
                )
                assert again.status_code == 303
                assert again.headers["location"] == (
                    f"/inbox/o/acme/webhooks/{endpoint_id}?done=redeliver"
                )
                wait_for(lambda: len(receiver.requests) >= 2, 30, "the redelivery")
                assert receiver.requests[1].webhook_id == first.webhook_id
            assert "Delivery queued again" in http.get(again.headers["location"]).text

            disabled = http.post(
                f"/inbox/o/acme/webhooks/{endpoint_id}/disable", data={"csrf": csrf}
            )
            assert disabled.status_code == 303
            page = http.get(disabled.headers["location"]).text
            assert "disabled: disabled by an admin" in page and ">Enable</button>" in page
            enabled = http.post(f"/inbox/o/acme/webhooks/{endpoint_id}/enable", data={"csrf": csrf})
            assert enabled.status_code == 303
            assert ">Disable</button>" in http.get(enabled.headers["location"]).text
            gone = http.post(f"/inbox/o/acme/webhooks/{endpoint_id}/delete", data={"csrf": csrf})
            assert gone.status_code == 303 and gone.headers["location"] == "/inbox/o/acme/webhooks"
            assert receiver.url("/acme-hook") not in http.get("/inbox/o/acme/webhooks").text
            assert http.get(f"/inbox/o/acme/webhooks/{endpoint_id}").status_code == 404
    finally:
        drop_endpoints(wh, acme_org)


def test_webhook_pages_are_for_org_admins_only_scoped_and_csrf_checked(
    stack: Any, world: dict[str, Any], db: Any, receiver: Receiver
) -> None:
    wh = webhook_settings(stack)
    acme_org, globex_org = str(world["acme"]["org_id"]), str(world["globex"]["org_id"])
    globex_endpoint, _ = add_endpoint(wh, globex_org, receiver.url("/globex"))
    acme_endpoint, _ = add_endpoint(wh, acme_org, receiver.url("/acme"))
    try:
        with running_dispatcher(wh):
            record_events(wh, globex_org, 1, "message.parsed")
            record_events(wh, acme_org, 1, "message.parsed")
            wait_for(lambda: len(receiver.requests) >= 2, 30, "a delivery to each org")

        def delivery_of(endpoint: dict[str, Any]) -> str:
            row = db.execute(
                "SELECT id::text AS id FROM webhook_delivery WHERE endpoint_id = %s",
                (endpoint["id"],),
            ).fetchone()
            return str(row["id"])

        globex_delivery, acme_delivery = delivery_of(globex_endpoint), delivery_of(acme_endpoint)
        for who in (OPERATOR, VIEWER):
            with signed_in(world, who) as http:
                csrf = form_field(CSRF_FIELD, http.get("/inbox/o/acme").text)
                assert 'href="/inbox/o/acme/webhooks"' not in http.get("/inbox/o/acme").text
                refused = http.get("/inbox/o/acme/webhooks")
                assert refused.status_code == 403 and "Only admins of acme" in refused.text
                assert http.get(f"/inbox/o/acme/webhooks/{acme_endpoint['id']}").status_code == 403
                for path, data in (
                    ("/inbox/o/acme/webhooks", {"url": receiver.url("/x"), "csrf": csrf}),
                    (
                        f"/inbox/o/acme/webhooks/deliveries/{acme_delivery}/redeliver",
                        {"csrf": csrf},
                    ),
                    (f"/inbox/o/acme/webhooks/{acme_endpoint['id']}/disable", {"csrf": csrf}),
                    (f"/inbox/o/acme/webhooks/{acme_endpoint['id']}/delete", {"csrf": csrf}),
                ):
                    assert http.post(path, data=data).status_code == 403, (who, path)
        with signed_in(world, ADMIN) as http:
            page = http.get("/inbox/o/acme/webhooks")
            assert receiver.url("/acme") in page.text and receiver.url("/globex") not in page.text
            csrf = form_field(CSRF_FIELD, page.text)
            assert http.get("/inbox/o/globex/webhooks").status_code == 404
            assert http.get(f"/inbox/o/acme/webhooks/{globex_endpoint['id']}").status_code == 404
            assert http.get("/inbox/o/acme/webhooks/not-a-uuid").status_code == 404
            for path in (
                f"/inbox/o/acme/webhooks/deliveries/{globex_delivery}/redeliver",
                f"/inbox/o/acme/webhooks/{globex_endpoint['id']}/disable",
                f"/inbox/o/acme/webhooks/{globex_endpoint['id']}/enable",
                f"/inbox/o/acme/webhooks/{globex_endpoint['id']}/delete",
                f"/inbox/o/globex/webhooks/deliveries/{globex_delivery}/redeliver",
            ):
                assert http.post(path, data={"csrf": csrf}).status_code == 404, path
            # CSRF: a missing or wrong token is refused before anything happens.
            for data in ({}, {"csrf": "x" * 43}):
                assert (
                    http.post(
                        f"/inbox/o/acme/webhooks/deliveries/{acme_delivery}/redeliver", data=data
                    ).status_code
                    == 403
                )
                assert (
                    http.post(
                        "/inbox/o/acme/webhooks", data={"url": receiver.url("/y"), **data}
                    ).status_code
                    == 403
                )
        # Nothing the refused requests asked for happened.
        rows = db.execute(
            "SELECT w.enabled, w.deleted_at, d.status, d.attempts FROM webhook_endpoint w"
            " JOIN webhook_delivery d ON d.endpoint_id = w.id WHERE w.id = ANY(%s::uuid[])",
            ([globex_endpoint["id"], acme_endpoint["id"]],),
        ).fetchall()
        assert [tuple(row.values()) for row in rows] == [(True, None, "delivered", 1)] * 2
        count = db.execute(
            "SELECT count(*) AS n FROM webhook_endpoint WHERE org_id = %s AND deleted_at IS NULL",
            (acme_org,),
        ).fetchone()
        assert count["n"] == 1
    finally:
        drop_endpoints(wh, acme_org)
        drop_endpoints(wh, globex_org)


def test_platform_admin_view_counts_every_org_and_is_404_for_everyone_else(
    stack: Any, world: dict[str, Any], db: Any
) -> None:
    slug = f"adm-{uuid.uuid4().hex[:6]}"
    assert cli(stack, "org", "add", slug, "--name", "Admin View Co").returncode == 0
    org_id = db.execute("SELECT id::text AS id FROM org WHERE slug = %s", (slug,)).fetchone()["id"]
    ids = []
    for n, hours in enumerate((1, 2, 3, 72)):
        ids.append(
            db.execute(
                "INSERT INTO inbound_message (org_id, source, source_message_id, subject,"
                " received_at, status, trace_id, content_sha256) VALUES (%s, 'EMAIL', %s, %s,"
                " now() - make_interval(hours => %s), 'RECEIVED', %s, %s) RETURNING id::text AS id",
                (org_id, f"<adm-{n}@x.example>", f"admin view {n}", hours, f"t{n}", f"{n:064x}"),
            ).fetchone()["id"]
        )
    db.execute(
        "UPDATE inbound_message SET status = 'FAILED' WHERE id = ANY(%s::uuid[])", (ids[:2],)
    )
    db.execute("UPDATE inbound_message SET conflict_of = %s WHERE id = %s", (ids[3], ids[2]))
    newest = db.execute(
        "SELECT max(received_at) AS t FROM inbound_message WHERE org_id = %s", (org_id,)
    ).fetchone()["t"]
    staff = "staff-view@orderflow.test"
    assert cli(stack, "user", "add", staff, "--platform-admin").returncode == 0
    with signed_in(world, staff) as http:
        page = http.get("/inbox/admin")
        assert page.status_code == 200
        assert 'href="/inbox/admin"' in http.get("/inbox/").text
    row = re.search(rf'<tr>\s*<td class="org"><a href="/inbox/o/{slug}">.*?</tr>', page.text, re.S)
    assert row is not None, page.text[:3000]
    cells = re.findall(r'data-label="([^"]+)"[^>]*>(.*?)</td>', row.group(0), re.S)
    text = {label: re.sub(r"<[^>]+>", "", value).strip() for label, value in cells}
    assert text == {
        "state": "active",
        "last 24 h": "3",
        "failed": "2",
        "conflicts": "1",
        "newest": newest.strftime("%Y-%m-%d %H:%M"),
    }
    assert f'href="/inbox/o/{slug}?q=status%3Afailed"' in row.group(0)
    for other in ("acme", "globex"):
        assert f'href="/inbox/o/{other}"' in page.text
    for who in (ADMIN, OPERATOR, VIEWER, GLOBEX):
        with signed_in(world, who) as http:
            refused = http.get("/inbox/admin")
            assert refused.status_code == 404, who
            assert 'href="/inbox/admin"' not in http.get("/inbox/").text
    with browser(world) as anonymous:
        assert anonymous.get("/inbox/admin").headers["location"] == "/inbox/signin"


def test_the_inbox_polls_newest_for_new_mail_and_works_without_script(
    stack: Any, world: dict[str, Any], db: Any
) -> None:
    slug = f"poll-{uuid.uuid4().hex[:6]}"
    assert cli(stack, "org", "add", slug, "--name", "Poll Co").returncode == 0
    org_id = db.execute("SELECT id::text AS id FROM org WHERE slug = %s", (slug,)).fetchone()["id"]
    add_user(stack, f"paul@{slug}.test", f"{slug}:viewer")

    def arrive(n: int) -> str:
        return str(
            db.execute(
                "INSERT INTO inbound_message (org_id, source, source_message_id, subject,"
                " received_at, status, trace_id) VALUES (%s, 'EMAIL', %s, %s, now(), 'RECEIVED',"
                " %s) RETURNING id::text AS id",
                (org_id, f"<poll-{n}@x.example>", f"poll subject {n}", f"p{n}"),
            ).fetchone()["id"]
        )

    with signed_in(world, f"paul@{slug}.test") as http:
        empty = http.get(f"/inbox/o/{slug}")
        live = re.search(r'id="live"[^>]*data-url="([^"]+)"', empty.text)
        assert live is not None and live.group(1) == f"/inbox/o/{slug}/newest"
        assert 'data-seconds="15"' in empty.text
        assert http.get(live.group(1)).json() == {"newest": None, "new": 0, "more": False}
        first = arrive(1)
        answer = http.get(live.group(1))
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.headers["cache-control"] == "private, no-store"
        assert answer.json()["new"] == 1 and answer.json()["newest"]["id"] == first
        page = http.get(f"/inbox/o/{slug}")
        url = re.search(r'id="live"[^>]*data-url="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        url = url.replace("&amp;", "&")
        assert f"seen={first}" in url
        assert http.get(url).json() == {
            "newest": {"id": first, "received_at": answer.json()["newest"]["received_at"]},
            "new": 0,
            "more": False,
        }
        later = [arrive(n) for n in (2, 3)]
        polled = http.get(url).json()
        assert polled["new"] == 2 and polled["newest"]["id"] in later
        # The list itself needs no script: the messages are in the HTML, newest first.
        assert "poll subject 3" in http.get(f"/inbox/o/{slug}").text
        # A search or an older page is not polled; another org's poll is a 404.
        assert 'id="live"' not in http.get(f"/inbox/o/{slug}", params={"q": "poll"}).text
        assert http.get("/inbox/o/acme/newest").status_code == 404
        assert http.get(f"/inbox/o/{slug}/newest", params={"since": "yesterday"}).status_code == 400
    with browser(world) as anonymous:
        assert anonymous.get(f"/inbox/o/{slug}/newest").status_code == 303


def test_the_purge_timer_prunes_used_and_expired_links_and_ended_sessions(
    stack: Any, world: dict[str, Any], db: Any
) -> None:
    user_id = db.execute(
        "SELECT id::text AS id FROM inbox_user WHERE email = %s", (VIEWER,)
    ).fetchone()["id"]

    def digest(name: str) -> str:
        return hashlib.sha256(f"{name}-{uuid.uuid4()}".encode()).hexdigest()

    # (name, used or revoked this long ago, expires in): a day's grace after either end.
    rows = {
        "used-2d": ("2 days", "10 minutes"),
        "expired-2d": (None, "-2 days"),
        "used-1h": ("1 hour", "10 minutes"),
        "expired-1h": (None, "-1 hour"),
        "live": (None, "10 minutes"),
    }
    tokens, sessions = {}, {}
    for name, (ended, expires) in rows.items():
        tokens[name] = digest(name)
        db.execute(
            "INSERT INTO inbox_login_token (token_sha256, user_id, created_at, expires_at, used_at)"
            " VALUES (%s, %s, now() - interval '3 days', now() + %s::interval,"
            " now() - %s::interval)",
            (tokens[name], user_id, expires, ended),
        )
        sessions[name] = digest(name)
        db.execute(
            "INSERT INTO inbox_session (id_sha256, user_id, csrf_token, created_at, expires_at,"
            " revoked_at) VALUES (%s, %s, 'x', now() - interval '3 days', now() + %s::interval,"
            " now() - %s::interval)",
            (sessions[name], user_id, expires, ended),
        )
    with signed_in(world, VIEWER) as http:
        code, done = cli_json(stack, "purge")
        assert code == 0, done
        assert done["inbox_signin_pruned"]["tokens"] >= 2
        assert done["inbox_signin_pruned"]["sessions"] >= 2
        # The live session of this very client goes on working.
        assert http.get("/inbox/o/acme").status_code == 200
    left_tokens = {
        row["token_sha256"]
        for row in db.execute(
            "SELECT token_sha256 FROM inbox_login_token WHERE token_sha256 = ANY(%s)",
            (list(tokens.values()),),
        ).fetchall()
    }
    left_sessions = {
        row["id_sha256"]
        for row in db.execute(
            "SELECT id_sha256 FROM inbox_session WHERE id_sha256 = ANY(%s)",
            (list(sessions.values()),),
        ).fetchall()
    }
    kept = ("used-1h", "expired-1h", "live")
    assert left_tokens == {tokens[name] for name in kept}
    assert left_sessions == {sessions[name] for name in kept}
    # `purge --org` is about one org's messages: it leaves sign-in rows alone.
    code, one = cli_json(stack, "purge", "--org", "acme")
    assert code == 0 and one["inbox_signin_pruned"] is None
