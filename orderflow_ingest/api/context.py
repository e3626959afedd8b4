"""What every request shares: settings, the connection pool, S3 and Redis clients; and the
dependencies that give a route a database connection and the calling key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from orderflow_ingest import keys
from orderflow_ingest.api.problems import ApiProblem
from orderflow_ingest.db import Conn, Pool
from orderflow_ingest.settings import Settings

BEARER = {"WWW-Authenticate": 'Bearer realm="orderflow-ingest"'}


@dataclass
class Backends:
    settings: Settings
    pool: Pool
    s3: Any
    redis: Any


def backends(request: Request) -> Backends:
    backends_: Backends = request.app.state.backends
    return backends_


def connection(request: Request) -> Iterator[Conn]:
    """A pooled connection for the request; committed when the route returns normally.

    FastAPI runs this exit after the response has been sent, so a route whose change the
    caller may act on at once (a key, an endpoint) commits itself before it answers.
    """
    with backends(request).pool.connection() as conn:
        yield conn


DbConn = Annotated[Conn, Depends(connection)]
BackendsDep = Annotated[Backends, Depends(backends)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require(permission: str) -> Callable[..., keys.Principal]:
    """A dependency: the calling key, which must hold `permission`."""

    def dependency(request: Request, conn: DbConn) -> keys.Principal:
        token = _bearer(request)
        client = request.client.host if request.client else None
        principal = keys.authenticate(conn, token, client) if token else None
        conn.commit()
        if principal is None:
            raise ApiProblem(401, "a valid API key is required (Authorization: Bearer ...)", BEARER)
        if not principal.may(permission):
            raise ApiProblem(403, f"this key lacks the {permission} permission")
        return principal

    return dependency
