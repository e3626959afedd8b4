"""CLI of the web inbox: `user add|list|disable|link`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orderflow_ingest.cli_support import ConfigOption, JsonOption, fail, settings_or_exit

user_app = typer.Typer(help="Web inbox users: org roles viewer, operator, admin.")


def _print(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, default=str, indent=2) if as_json else text)


def _user_text(user: dict[str, Any]) -> str:
    state = "disabled" if user["disabled_at"] else "active"
    orgs = ",".join(f"{m['slug']}:{m['role']}" for m in user["orgs"])
    flag = "\tplatform-admin" if user["platform_admin"] else ""
    return f"{user['email']}\t{state}\torgs={orgs or '-'}{flag}"


@user_app.command("add")
def user_add(
    email: str,
    org: Annotated[
        list[str] | None,
        typer.Option("--org", help="SLUG:ROLE (viewer, operator, admin); repeat for several."),
    ] = None,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    platform_admin: Annotated[
        bool, typer.Option("--platform-admin", help="Our own staff: admin in every org.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a user (or update one: roles are set, the user re-enabled).

    Example: orderflow-ingest user add ana@acme.example --org acme:operator
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.inbox import users

    memberships = []
    for item in org or []:
        slug, sep, role = item.partition(":")
        if not sep:
            fail(f"--org {item!r}: expected SLUG:ROLE, as in acme:viewer", 2)
        memberships.append((slug.lower(), role))
    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        try:
            user = users.add_user(conn, email, name, memberships, platform_admin)
        except users.UserRequestError as error:
            fail(str(error), 2)
        conn.commit()
    _print(user, as_json, _user_text(user))


@user_app.command("list")
def user_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List users with their orgs and roles.

    Example: orderflow-ingest user list --json
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.inbox import users

    with connect(settings_or_exit(config).database_url) as conn:
        found = users.list_users(conn)
    _print(found, as_json, "\n".join(_user_text(user) for user in found) or "no users")


@user_app.command("disable")
def user_disable(email: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Disable a user at once: sessions end, sign-in links stop working.

    Example: orderflow-ingest user disable ana@acme.example
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.inbox import users

    with connect(settings_or_exit(config).database_url) as conn:
        user = users.disable_user(conn, email)
        if user is None:
            fail(f"no user {email}", 1)
        conn.commit()
    _print(user, as_json, _user_text(user))


@user_app.command("link")
def user_link(email: str, config: ConfigOption = None) -> None:
    """Print a sign-in link for a user (demo, or support on the phone); single use.

    Example: orderflow-ingest user link ana@acme.example
    """
    from orderflow_ingest.db import connect
    from orderflow_ingest.inbox import signin

    settings = settings_or_exit(config)
    with connect(settings.database_url) as conn:
        link = signin.request_link(conn, email, settings.inbox_link_ttl)
        if link.send_to is None:
            fail(f"no active user {email}", 1)
        conn.commit()
    typer.echo(signin.link_url(settings, link.token))


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user", no_args_is_help=True)
