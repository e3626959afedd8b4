"""The inbox's routes. Each page looks the user up from the session cookie, becomes the
keys.Principal of their role in the org named by the URL (users.principal_in), and then calls
the API's own scoped queries and route functions: no second query or permission path. An id
outside the org answers 404 exactly like one that does not exist.

Every route that changes something commits before it answers: FastAPI runs the exit of the
pooled-connection dependency (its commit) only after the response is sent, so a browser's next
request could otherwise see the state before the change."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from orderflow_ingest import events, keys
from orderflow_ingest.api import message_queries, models, routes
from orderflow_ingest.api.context import BackendsDep, DbConn
from orderflow_ingest.api.problems import ApiProblem
from orderflow_ingest.inbox import mailer, signin, users, words
from orderflow_ingest.inbox.search import SearchError, parse
from orderflow_ingest.inbox.web import (
    CSRF_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    PageError,
    SignInRequired,
    check_csrf,
    pre_session_csrf,
    set_csrf_cookie,
    set_session_cookie,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["size"] = words.size
templates.env.globals["event_words"] = words.event_words
PAGE_SIZE = 50
# The inbox's poll for new mail (static/live.js): how often, and how many it counts at most.
POLL_SECONDS = 15
POLL_COUNT = 100
SENT_TEXT = (
    "If that address has an account, a sign-in link is on its way. It works once, for"
    " {minutes} minutes."
)


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("user", None)
    context.setdefault("org", None)
    context["nonce"] = request.state.csp_nonce
    return templates.TemplateResponse(request, name, context, status_code=status)


def _secure(backends: BackendsDep) -> bool:
    return bool(backends.settings.inbox_cookie_secure)


def current_user(request: Request, conn: DbConn) -> dict[str, Any]:
    """The signed-in user (with orgs and the session's CSRF token), or a redirect to sign-in."""
    found = signin.session(conn, request.cookies.get(SESSION_COOKIE, ""))
    user = users.get_user(conn, found["user_id"]) if found else None
    if found is None or user is None:
        raise SignInRequired()
    user["csrf"] = found["csrf_token"]
    return user


User = Annotated[dict[str, Any], Depends(current_user)]


def in_org(user: dict[str, Any], slug: str) -> tuple[keys.Principal, dict[str, Any]]:
    found = users.principal_in(user, slug)
    if found is None:
        raise PageError(404, "No such page.")
    return found


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise PageError(404, "No such page.") from None


def _api_call(function: Any, *args: Any) -> Any:
    """Call an API route function; its problems become pages with the same status."""
    try:
        return function(*args)
    except ApiProblem as problem:
        raise PageError(problem.status, problem.detail) from None


# Sign-in ------------------------------------------------------------------------------------


@router.get("/signin")
def signin_page(request: Request, backends: BackendsDep) -> Response:
    token = pre_session_csrf(request)
    response = render(request, "signin.html", csrf=token)
    set_csrf_cookie(response, token, _secure(backends))
    return response


@router.post("/signin")
def signin_request(
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    tasks: BackgroundTasks,
    email: Annotated[str, Form(max_length=320)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Same answer, same work, whether or not the address has an account."""
    check_csrf(request.cookies.get(CSRF_COOKIE), csrf)
    settings = backends.settings
    client = request.client.host if request.client else "unknown"
    if signin.rate_limited(backends.redis, email, client):
        raise PageError(429, "Too many sign-in requests. Wait a few minutes and try again.")
    link = signin.request_link(conn, email, settings.inbox_link_ttl)
    conn.commit()
    url = signin.link_url(settings, link.token)
    message = mailer.compose(
        settings.inbox_mail_from, link.send_to or email, url, settings.inbox_link_ttl
    )
    if link.send_to is not None:
        tasks.add_task(mailer.send, settings.inbox_smtp_url, message)
    text = SENT_TEXT.format(minutes=settings.inbox_link_ttl // 60)
    return render(request, "signin_sent.html", text=text)


@router.get("/signin/link/{token}")
def signin_confirm(token: str, request: Request, conn: DbConn, backends: BackendsDep) -> Response:
    """A page with a button: mail link scanners GET links, only a person's POST signs in."""
    live = len(token) <= 100 and signin.token_is_live(conn, token)
    csrf = pre_session_csrf(request)
    response = render(request, "confirm.html", token=token, live=live, csrf=csrf)
    set_csrf_cookie(response, csrf, _secure(backends))
    return response


@router.post("/signin/link")
def signin_redeem(
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    token: Annotated[str, Form(max_length=100)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(request.cookies.get(CSRF_COOKIE), csrf)
    opened = signin.redeem(conn, token, backends.settings.inbox_session_hours)
    if opened is None:
        raise PageError(
            400, "This sign-in link was already used or has expired. Ask for a new one."
        )
    conn.commit()
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    set_session_cookie(
        response, opened[0], _secure(backends), backends.settings.inbox_session_hours
    )
    response.delete_cookie(CSRF_COOKIE, path=PREFIX)
    return response


@router.post("/signout")
def signout(
    request: Request,
    conn: DbConn,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    signin.end_session(conn, request.cookies.get(SESSION_COOKIE, ""))
    conn.commit()
    response = RedirectResponse(f"{PREFIX}/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


# Pages --------------------------------------------------------------------------------------


@router.get("/")
def home(request: Request, user: User) -> Response:
    if len(user["orgs"]) == 1:
        return RedirectResponse(f"{PREFIX}/o/{user['orgs'][0]['slug']}", status_code=303)
    return render(request, "orgs.html", user=user)


@router.get("/o/{slug}")
def inbox(
    slug: str,
    request: Request,
    conn: DbConn,
    user: User,
    q: Annotated[str, Query(max_length=500)] = "",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    principal, org = in_org(user, slug)
    error = None
    messages: list[dict[str, Any]] = []
    next_url = None
    try:
        where = parse(q)
        messages, next_cursor = message_queries.list_messages(
            conn, principal.org_ids, where, cursor, PAGE_SIZE
        )
        if next_cursor:
            next_url = f"{PREFIX}/o/{org['slug']}?" + urlencode({"q": q, "cursor": next_cursor})
    except SearchError as problem:
        error = str(problem)
    except message_queries.InvalidPageCursor as problem:
        error = str(problem)
    status = 400 if error else 200
    live_url = None
    if not q and cursor is None and error is None:  # the newest page, unfiltered: poll it
        live_url = f"{PREFIX}/o/{org['slug']}/newest"
        if messages:
            top = messages[0]
            live_url += "?" + urlencode(
                {"since": top["received_at"].isoformat(), "seen": top["id"]}
            )
    return render(
        request,
        "inbox.html",
        status,
        user=user,
        org=org,
        q=q,
        error=error,
        messages=messages,
        next_url=next_url,
        paged=cursor is not None,
        live_url=live_url,
        poll_seconds=POLL_SECONDS,
    )


@router.get("/o/{slug}/newest")
def newest(
    slug: str,
    conn: DbConn,
    user: User,
    since: Annotated[str | None, Query(max_length=64)] = None,
    seen: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """For the inbox's poll: the newest message, and how many arrived after the one the page
    shows at its top (`since`, `seen`: its received time and id, the list's order), counted
    through the same scoped list query as the page (at most POLL_COUNT, then `more`)."""
    principal, _ = in_org(user, slug)
    top: tuple[datetime, uuid.UUID] | None = None
    if since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            return JSONResponse({"error": "since is not an ISO 8601 time"}, status_code=400)
        if when.tzinfo is None:
            return JSONResponse({"error": "since needs a UTC offset"}, status_code=400)
        try:
            top = (when, uuid.UUID(seen) if seen else uuid.UUID(int=(1 << 128) - 1))
        except ValueError:
            return JSONResponse({"error": "seen is not a message id"}, status_code=400)
    where = message_queries.MessageFilter(received_after=top[0] if top else None)
    rows, more = message_queries.list_messages(conn, principal.org_ids, where, None, POLL_COUNT)
    newer = [row for row in rows if top is None or (row["received_at"], uuid.UUID(row["id"])) > top]
    first = rows[0] if rows else None
    return JSONResponse(
        {
            "newest": {"id": first["id"], "received_at": first["received_at"].isoformat()}
            if first
            else None,
            "new": len(newer),
            "more": bool(more) and len(newer) == len(rows),
        }
    )


@router.get("/o/{slug}/messages/{message_id}")
def message_page(
    slug: str,
    message_id: str,
    request: Request,
    conn: DbConn,
    user: User,
    done: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    principal, org = in_org(user, slug)
    found = _api_call(routes.get_message, _uuid(message_id), principal, conn)
    conflicts = message_queries.conflicts(conn, principal.org_ids, found["id"])
    return render(
        request,
        "message.html",
        user=user,
        org=org,
        message=found,
        verdicts=words.verdict_lines(found["verdicts"]),
        conflicts=conflicts,
        may_reprocess=principal.may("reprocess"),
        may_download=principal.may("raw:read"),
        done=done if done in ("reprocess",) else None,
    )


def _local(link: dict[str, Any]) -> RedirectResponse:
    """Redirect to the API's signed download link, by path (never to another host)."""
    return RedirectResponse(urlsplit(link["url"]).path, status_code=303)


@router.get("/o/{slug}/messages/{message_id}/eml")
def download_eml(
    slug: str,
    message_id: str,
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
) -> Response:
    principal, _ = in_org(user, slug)
    if not principal.may("raw:read"):
        raise PageError(403, "Your role may not download raw messages.")
    link = _api_call(routes.raw_link, _uuid(message_id), principal, conn, backends, request)
    return _local(link)


@router.get("/o/{slug}/documents/{document_id}/download")
def download_document(
    slug: str,
    document_id: str,
    request: Request,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
) -> Response:
    principal, _ = in_org(user, slug)
    if not principal.may("raw:read"):
        raise PageError(403, "Your role may not download documents.")
    link = _api_call(routes.document_link, _uuid(document_id), principal, conn, backends, request)
    return _local(link)


@router.post("/o/{slug}/messages/{message_id}/reprocess")
def reprocess(
    slug: str,
    message_id: str,
    conn: DbConn,
    backends: BackendsDep,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    principal, org = in_org(user, slug)
    target = _uuid(message_id)
    if not principal.may("reprocess"):
        _api_call(routes.get_message, target, principal, conn)  # 404 before 403
        raise PageError(403, f"Your role in {org['slug']} ({org['role']}) may not reprocess.")
    _api_call(routes.reprocess, target, principal, conn, backends)
    return RedirectResponse(
        f"{PREFIX}/o/{org['slug']}/messages/{target}?done=reprocess", status_code=303
    )


@router.get("/o/{slug}/events")
def events_page(
    slug: str,
    request: Request,
    conn: DbConn,
    user: User,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    principal, org = in_org(user, slug)
    if not principal.may("events:read"):
        raise PageError(403, "Your role may not read events.")
    try:
        data, next_cursor = events.read(conn, after, org_ids=principal.org_ids, limit=100)
    except events.InvalidCursor as problem:
        raise PageError(400, str(problem)) from None
    return render(
        request,
        "events.html",
        user=user,
        org=org,
        events=data,
        next_url=f"{PREFIX}/o/{org['slug']}/events?after={next_cursor}" if data else None,
    )


# Keys (org admins): the API's own key routes, with this org's admin Principal ---------------


def admin_of(
    user: dict[str, Any], slug: str, permission: str, what: str
) -> tuple[keys.Principal, dict[str, Any]]:
    """The user's Principal in the org of the URL, if it holds `permission` (403 names `what`
    the admins do); one guard for the keys, webhooks and domains pages."""
    principal, org = in_org(user, slug)
    if not principal.may(permission):
        raise PageError(403, f"Only admins of {org['slug']} {what}.")
    return principal, org


def _keys_admin(user: dict[str, Any], slug: str) -> tuple[keys.Principal, dict[str, Any]]:
    return admin_of(user, slug, "keys:admin", "manage its API keys")


def _keys_page(
    request: Request, conn: DbConn, user: dict[str, Any], slug: str, **extra: Any
) -> HTMLResponse:
    principal, org = _keys_admin(user, slug)
    listed = _api_call(routes.list_keys, principal, conn)["data"]
    return render(
        request,
        "keys.html",
        user=user,
        org=org,
        keys=listed,
        permissions=keys.PERMISSIONS,
        **extra,
    )


@router.get("/o/{slug}/keys")
def keys_page(slug: str, request: Request, conn: DbConn, user: User) -> Response:
    return _keys_page(request, conn, user, slug)


@router.post("/o/{slug}/keys")
def create_key(
    slug: str,
    request: Request,
    conn: DbConn,
    user: User,
    name: Annotated[str, Form(max_length=200)] = "",
    permission: Annotated[list[str] | None, Form()] = None,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Create a key for this org; its secret is on this one response only."""
    check_csrf(user["csrf"], csrf)
    principal, org = _keys_admin(user, slug)
    if not name.strip() or not permission:
        raise PageError(400, "A key needs a name and at least one permission.")
    body = models.NewKey(name=name.strip(), org_ids=[org["org_id"]], permissions=permission)
    created = _api_call(routes.create_key, body, principal, conn)
    conn.commit()
    return _keys_page(request, conn, user, slug, created=created)


@router.post("/o/{slug}/keys/{key_id}/revoke")
def revoke_key(
    slug: str,
    key_id: str,
    conn: DbConn,
    user: User,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(user["csrf"], csrf)
    principal, org = _keys_admin(user, slug)
    _api_call(routes.revoke_key, _uuid(key_id), principal, conn)
    conn.commit()  # before the answer: a yield dependency's exit runs after it is sent
    return RedirectResponse(f"{PREFIX}/o/{org['slug']}/keys", status_code=303)
