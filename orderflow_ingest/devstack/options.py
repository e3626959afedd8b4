"""What kind of stack to start; stored in stack.json so `dev down` and `dev env` know it too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# ORDERFLOW_* settings that point at an existing server instead of one the stack starts.
EXTERNAL_SETTINGS = (
    "ORDERFLOW_DATABASE_URL",
    "ORDERFLOW_MIGRATE_DATABASE_URL",
    "ORDERFLOW_REDIS_URL",
    "ORDERFLOW_S3_ENDPOINT_URL",
    "ORDERFLOW_S3_BUCKET",
    "ORDERFLOW_S3_ACCESS_KEY",
    "ORDERFLOW_S3_SECRET_KEY",
    "ORDERFLOW_S3_REGION",
)


@dataclass(frozen=True)
class StackOptions:
    """Options of one stack. Defaults suit the tests: no milter, no workers, no API, real
    delivery. `StackOptions.whole_system()` is what `dev up` and `make demo` start.

    external: ORDERFLOW_* URLs of servers to use instead of starting our own (`dev up` fills
    it from the environment); the stack then runs migrations and creates orgs and the bucket
    there, and never stops those servers.
    """

    ingest_domain: str = "orderflow.test"
    milter: bool = False
    workers: int = 0
    deliver: bool = True
    # `orderflow-ingest api` (the HTTP API at /v1 and the web inbox at /inbox) on a loopback
    # port chosen at the first start and kept, plain HTTP (ORDERFLOW_INBOX_COOKIE_SECURE=false).
    api: bool = False
    org_slugs: tuple[str, ...] = ("acme",)
    extra_settings: dict[str, str] = field(default_factory=dict)
    # pipe(8) processes Postfix may run at once (master.cf maxproc of the orderflow service).
    pipe_concurrency: int = 8
    # Seconds between retries of deferred mail: short, so outage tests finish quickly.
    retry_seconds: int = 2
    # main.cf settings laid over the rendered config (benchmarks, special tests).
    postfix_overrides: dict[str, str] = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    # The unprivileged user of the pipe client and of our services, as in production.
    service_user: str = "orderflow"
    s3_bucket: str = "orderflow-dev"
    # Test hosts in network namespaces only (tests/netns.py): every process of the stack runs
    # under `ip netns exec <netns>`, and its servers (PostgreSQL, Redis, S3, Postfix's smtpd)
    # bind `listen_address` instead of 127.0.0.1; `smtp_port` 0 means a free port.
    netns: str = ""
    listen_address: str = "127.0.0.1"
    smtp_port: int = 0

    @classmethod
    def whole_system(cls, **changes: Any) -> StackOptions:
        """Everything a person trying it wants: Postfix with the milter, the delivery service,
        one worker and the API with the web inbox (`dev up`'s and the demo's default)."""
        return cls(**{"milter": True, "workers": 1, "api": True, **changes})

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["org_slugs"] = list(self.org_slugs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackOptions:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if "org_slugs" in values:
            values["org_slugs"] = tuple(values["org_slugs"])
        return cls(**values)

    def uses_external(self, setting: str) -> bool:
        return bool(self.external.get(setting))
