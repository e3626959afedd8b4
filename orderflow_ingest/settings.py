"""Every setting of orderflow-ingest, in one place, each with its default and why it exists.

Settings come from an env file (``KEY=value`` lines, ``#`` comments) and then the process
environment, which wins. The file matters because pipe(8) starts ``deliver`` with an almost
empty environment. A wrong value stops the program at start with a message naming the setting.
The compiled pipe client (pipe/deliver.c) reads its two settings from the same file the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/orderflow/ingest.env"
CONFIG_PATH_VARIABLE = "ORDERFLOW_CONFIG"
# The schema owner's URL: only `db migrate` reads it, from its own root-only file (or the
# environment of that one command), never from the settings file every service reads.
MIGRATE_URL_SETTING = "ORDERFLOW_MIGRATE_DATABASE_URL"
DEFAULT_MIGRATE_CONFIG_PATH = "/etc/orderflow/migrate.env"
# `dev up` also exports where its stack listens (SMTP host and port); those are not settings.
DEV_PREFIX = "ORDERFLOW_DEV_"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it."""


def _text(value: str) -> str:
    return value


def _int(value: str) -> int:
    return int(value)


def _float(value: str) -> float:
    return float(value)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in value.split(",") if item.strip())


def _loopback_listen(value: str) -> str:
    """Metrics must never be reachable from outside the host (host:port on loopback)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
        raise ValueError("must listen on loopback (127.0.0.1:PORT or [::1]:PORT)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("needs a port, as in 127.0.0.1:9464")
    return value


def _unix_socket_path(value: str) -> str:
    """An absolute filesystem path: an empty one is an abstract socket anyone can bind, a
    relative one depends on the working directory (deliver.c refuses the same, with 75)."""
    if not value.startswith("/"):
        raise ValueError("must be an absolute path, as in /run/orderflow/deliver.sock")
    if len(value.encode()) > 107:  # sun_path holds 108 bytes with the NUL
        raise ValueError("longer than a unix socket path may be (107 bytes)")
    if "\0" in value:  # a NUL would end the path deliver.c sees early
        raise ValueError("must not contain a NUL byte")
    return value


# deliver.c takes ORDERFLOW_DELIVER_TIMEOUT only as plain decimal seconds, above 0 and at most
# this (pipe/build.py passes it to the compiler); the services refuse what the client would.
MAX_DELIVER_TIMEOUT = 86400


def _deliver_timeout(value: str) -> float:
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value) is None:
        raise ValueError("expected plain decimal seconds, as in 240 or 0.5")
    seconds = float(value)
    if not 0 < seconds <= MAX_DELIVER_TIMEOUT:
        raise ValueError(f"must be above 0 and at most {MAX_DELIVER_TIMEOUT} seconds")
    return seconds


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    return parse


def _host_port(value: str) -> str:
    """host:port ([v6]:port); whether a non-loopback host is allowed is checked at load."""
    host, _, port = value.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected host:port, as in 127.0.0.1:8480")
    return value


def _link_ttl(value: str) -> int:
    seconds = int(value)
    if not 1 <= seconds <= 600:
        raise ValueError("must be between 1 and 600 seconds (links are short-lived)")
    return seconds


def _smtp_url(value: str) -> str:
    """Empty, or smtp://host:port (a relay of its own for the inbox's sign-in mail)."""
    if not value:
        return value
    scheme, sep, rest = value.partition("://")
    if scheme != "smtp" or not sep:
        raise ValueError("expected smtp://host:port")
    _host_port(rest.rstrip("/"))
    return value


def _inbox_link_ttl(value: str) -> int:
    seconds = int(value)
    if not 60 <= seconds <= 900:
        raise ValueError("must be between 60 and 900 seconds (sign-in links are short-lived)")
    return seconds


def is_loopback_listen(value: str) -> bool:
    host = value.rpartition(":")[0].strip("[]")
    return host in ("::1", "localhost") or host.startswith("127.")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError("must be one of " + ", ".join(allowed))
        return value

    return parse


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(value: str) -> float:
    """A duration: `90` or `90s`, `5m`, `2h`, `1d` (fractions allowed: `0.2s`)."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in _DURATION_UNITS else text
    seconds = float(number) * _DURATION_UNITS[unit]
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError("expected a duration such as 30s, 5m, 2h or 1d")
    return seconds


def _schedule(value: str) -> tuple[float, ...]:
    """Comma-separated durations, one per retry (`5s,5m,30m,2h`)."""
    delays = tuple(_seconds(item) for item in value.split(",") if item.strip())
    if not delays:
        raise ValueError("needs at least one delay, as in 5s,5m,30m")
    return delays


def _networks(value: str) -> tuple[str, ...]:
    """Comma-separated CIDRs, addresses or host names (validated here, used by webhooks/ssrf)."""
    import ipaddress

    items = _csv(value)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            if not all(part and part.replace("-", "").isalnum() for part in item.split(".")):
                raise ValueError(f"{item!r} is neither a CIDR nor a host name") from None
    return items


class Setting:
    """One setting: its environment name, parser, default (None = required) and purpose."""

    __slots__ = ("default", "doc", "name", "parse")

    def __init__(self, name: str, parse: Callable[[str], Any], default: str | None, doc: str):
        self.name = name
        self.parse = parse
        self.default = default
        self.doc = doc


SETTINGS: tuple[Setting, ...] = (
    # Backends. Required: a mail host without them cannot accept anything safely.
    Setting("ORDERFLOW_DATABASE_URL", _text, None, "PostgreSQL URL of the runtime role."),
    Setting(
        "ORDERFLOW_MIGRATE_DATABASE_URL",
        _text,
        "",
        "PostgreSQL URL of the schema owner, read only by `db migrate` from its own file"
        " (--migrate-config, default /etc/orderflow/migrate.env, root 0600) or environment;"
        " refused in the settings file the services read. Empty means the runtime URL.",
    ),
    Setting("ORDERFLOW_REDIS_URL", _text, None, "Redis URL for RQ queues and metric counters."),
    Setting("ORDERFLOW_S3_ENDPOINT_URL", _text, "", "S3 endpoint; empty means AWS's default."),
    Setting("ORDERFLOW_S3_BUCKET", _text, None, "Bucket for raw messages and documents."),
    Setting("ORDERFLOW_S3_ACCESS_KEY", _text, "", "S3 access key; empty uses boto3's chain."),
    Setting("ORDERFLOW_S3_SECRET_KEY", _text, "", "S3 secret key; empty uses boto3's chain."),
    Setting("ORDERFLOW_S3_REGION", _text, "us-east-1", "S3 region name sent in signatures."),
    Setting(
        "ORDERFLOW_BACKEND_TIMEOUT",
        _float,
        "10",
        "Seconds one database, Redis or S3 call may take before it counts as an outage.",
    ),
    # Addressing: orders+<slug>@<domain>.
    Setting(
        "ORDERFLOW_INGEST_DOMAINS",
        _csv,
        None,
        "Comma-separated domains we receive orders for (orderflow.example.com).",
    ),
    Setting("ORDERFLOW_LOCAL_PART", _text, "orders", "Local part before the + and org slug."),
    # The pipe path.
    Setting(
        "ORDERFLOW_DELIVER_SOCKET",
        _unix_socket_path,
        "/run/orderflow/deliver.sock",
        "Unix socket of the delivery service the per-message pipe client hands mail to.",
    ),
    Setting(
        "ORDERFLOW_DELIVER_SOCKET_GROUP",
        _text,
        "",
        "Group given the delivery socket (the pipe user's group); empty keeps the service's.",
    ),
    Setting(
        "ORDERFLOW_DELIVER_TIMEOUT",
        _deliver_timeout,
        "240",
        "Seconds deliver may take before it gives up with 75; keep below orderflow_time_limit.",
    ),
    Setting(
        "ORDERFLOW_SPOOL_DIR",
        _text,
        "/var/spool/orderflow",
        "Where the delivery service spools a message while hashing and storing it.",
    ),
    Setting(
        "ORDERFLOW_MIN_FREE_MB",
        _at_least(0),
        "1024",
        "MiB that must stay free on the spool and on Postfix's queue file system: under it the"
        " milter answers 452 4.3.1 at MAIL FROM and deliver defers (0: off). Keep it above"
        " Postfix's queue_minfree (postfix-config/README.md).",
    ),
    Setting(
        "ORDERFLOW_MAX_HEADER_BYTES",
        _int,
        "1048576",
        "A header block larger than this is stored raw and marked FAILED, never parsed.",
    ),
    Setting(
        "ORDERFLOW_DELIVER_WORKERS",
        _int,
        "16",
        "Deliveries the service handles at once; Postfix's pipe concurrency should not exceed it.",
    ),
    # Jobs.
    Setting(
        "ORDERFLOW_ATTACHMENT_QUEUE", _text, "orderflow-attachments", "RQ queue of extract jobs."
    ),
    Setting(
        "ORDERFLOW_EXTRACTION_QUEUE",
        _text,
        "extraction",
        "RQ queue the downstream extraction pipeline (spec 009) consumes.",
    ),
    Setting(
        "ORDERFLOW_EXTRACTION_FUNCTION",
        _text,
        "orderflow.extraction.extract_document",
        "Dotted path of the downstream job, called as (document_id, org_id).",
    ),
    Setting("ORDERFLOW_JOB_TIMEOUT", _int, "900", "Seconds an attachment job may run in RQ."),
    Setting("ORDERFLOW_MAX_MIME_DEPTH", _int, "20", "Nesting beyond this is not walked into."),
    Setting(
        "ORDERFLOW_MAX_DOCUMENTS_PER_MESSAGE",
        _at_least(1),
        "500",
        "Documents extracted from one message at most; parts beyond are recorded as skipped "
        "with the reason (the raw message keeps them).",
    ),
    # The milter.
    Setting(
        "ORDERFLOW_MILTER_SOCKET",
        _text,
        "/run/orderflow/milter.sock",
        "Unix socket path (or inet:PORT@127.0.0.1) the milter listens on.",
    ),
    Setting(
        "ORDERFLOW_AUTHSERV_ID",
        _text,
        "",
        "authserv-id of our Authentication-Results header; empty means the first ingest domain.",
    ),
    Setting(
        "ORDERFLOW_DMARC_POLICY",
        _choice("record", "reject"),
        "record",
        "record: only stamp verdicts; reject: 550 5.7.1 when DMARC fails under p=reject.",
    ),
    Setting(
        "ORDERFLOW_TEMPFAIL_ON_DNS_ERROR",
        _bool,
        "false",
        "Answer 451 when SPF/DKIM/DMARC look-ups time out instead of recording temperror.",
    ),
    Setting("ORDERFLOW_DNS_TIMEOUT", _float, "5", "Total seconds for all DNS of one check."),
    Setting(
        "ORDERFLOW_DNS_SERVERS",
        _csv,
        "",
        "Resolvers for SPF/DKIM/DMARC (ip or ip:port); empty means /etc/resolv.conf.",
    ),
    Setting(
        "ORDERFLOW_DNS_CACHE_BYTES",
        _at_least(65536),
        "16777216",
        "Most bytes of DNS answers the milter caches (least recently used go first).",
    ),
    Setting(
        "ORDERFLOW_DNS_CACHE_MAX_TTL",
        _at_least(0),
        "3600",
        "Most seconds the milter caches a DNS answer, whatever its TTL says (0: no cache).",
    ),
    Setting(
        "ORDERFLOW_PUBLIC_SUFFIX_LIST",
        _text,
        "/usr/share/publicsuffix/public_suffix_list.dat",
        "Public Suffix List for DMARC (Debian's publicsuffix); the milter refuses to start "
        "without it.",
    ),
    Setting(
        "ORDERFLOW_DKIM_L_POLICY",
        _choice("record", "fail"),
        "record",
        "record: note a DKIM l= that leaves body content unsigned; fail: that signature fails.",
    ),
    Setting("ORDERFLOW_ORG_CACHE_TTL", _float, "30", "Seconds an org look-up is cached."),
    # Custom domains per org (orderflow_ingest/domains, issue 13).
    Setting(
        "ORDERFLOW_DOMAIN_MX_HOSTS",
        _csv,
        "",
        "Our MX host names a custom domain's MX must point at; empty: mx.<first ingest domain>.",
    ),
    Setting(
        "ORDERFLOW_DOMAIN_CONFIRMATIONS",
        _at_least(1),
        "2",
        "Consecutive conclusive check results before a custom domain changes state (damping).",
    ),
    Setting(
        "ORDERFLOW_DOMAIN_MX_GRACE",
        _seconds,
        "48h",
        "How long a custom domain whose MX left us gets 451 before it is suspended (550).",
    ),
    Setting(
        "ORDERFLOW_DOMAIN_CHECK_INTERVAL",
        _seconds,
        "5m",
        "Least time between two periodic checks of one custom domain (`domain check`).",
    ),
    Setting(
        "ORDERFLOW_MILTER_LOOKUP_TIMEOUT",
        _float,
        "3",
        "Seconds an org look-up at RCPT may wait for the database before the milter answers 451.",
    ),
    Setting(
        "ORDERFLOW_MILTER_USER",
        _text,
        "",
        "User the milter drops to when started as root; empty keeps the starting user.",
    ),
    Setting(
        "ORDERFLOW_MILTER_SOCKET_GROUP",
        _text,
        "",
        "Group given the milter's unix socket (mode 0660): Postfix's group, e.g. postfix.",
    ),
    # Webhooks (orderflow_ingest/webhooks, docs/webhooks.md).
    Setting(
        "ORDERFLOW_WEBHOOK_RETRY_SCHEDULE",
        _schedule,
        "5s,5m,30m,2h,5h,10h,14h,20h,24h",
        "Delays between webhook attempts after the first; when they run out the delivery fails.",
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_JITTER", _float, "0.2", "Random +/- fraction added to each retry delay."
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_RETRY_AFTER_MAX",
        _seconds,
        "24h",
        "Longest Retry-After a receiver may ask for; longer requests are cut to this.",
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_DISABLE_AFTER",
        _seconds,
        "5d",
        "An endpoint whose every attempt failed for this long is disabled (endpoint.disabled).",
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_SECRET_GRACE",
        _seconds,
        "24h",
        "After a secret rotation the old secret keeps signing (a second signature) this long.",
    ),
    Setting("ORDERFLOW_WEBHOOK_CONNECT_TIMEOUT", _float, "5", "Seconds to connect to a receiver."),
    Setting(
        "ORDERFLOW_WEBHOOK_TIMEOUT",
        _float,
        "15",
        "Seconds one webhook attempt may take in all (connect, send, response).",
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_ALLOW",
        _networks,
        "",
        "CIDRs/hosts webhooks may reach although private or loopback (on-premise receivers).",
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_REQUIRE_HTTPS",
        _bool,
        "true",
        "Refuse http:// endpoint URLs (set false only for receivers inside your network).",
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_CONCURRENCY",
        _int,
        "8",
        "Attempts one dispatcher makes at once (threads); several dispatchers may run.",
    ),
    Setting(
        "ORDERFLOW_WEBHOOK_POLL_INTERVAL",
        _float,
        "1",
        "Seconds a dispatcher waits before looking again when there was nothing to do.",
    ),
    Setting(
        "ORDERFLOW_API_BASE_URL",
        _text,
        "",
        "Public base URL of the HTTP API for links in webhooks; empty gives relative /v1/ links.",
    ),
    # The event log and the HTTP API (orderflow_ingest/events.py, orderflow_ingest/api).
    Setting(
        "ORDERFLOW_EVENT_RETENTION_DAYS",
        _at_least(1),
        "30",
        "Days events are kept; `events prune` (a daily timer) deletes older ones.",
    ),
    # Data lifecycle (orderflow_ingest/lifecycle, docs/operations.md "Retention and deletion").
    Setting(
        "ORDERFLOW_RETENTION_DAYS",
        _at_least(0),
        "0",
        "Days messages, documents and their objects are kept for orgs without their own"
        " retention (`org retention`); `purge` (a daily timer) deletes older ones. 0: forever.",
    ),
    Setting(
        "ORDERFLOW_API_LISTEN",
        _host_port,
        "127.0.0.1:8480",
        "Where `api` listens; loopback unless ORDERFLOW_API_ALLOW_PUBLIC_BIND (use a TLS proxy).",
    ),
    Setting(
        "ORDERFLOW_API_ALLOW_PUBLIC_BIND",
        _bool,
        "false",
        "Let ORDERFLOW_API_LISTEN name a non-loopback address (the API speaks plain HTTP).",
    ),
    Setting(
        "ORDERFLOW_API_LINK_TTL",
        _link_ttl,
        "300",
        "Seconds a signed raw/document download link stays valid (at most 600).",
    ),
    # The web inbox (orderflow_ingest/inbox, README "Web inbox"), served by `api` under /inbox.
    Setting(
        "ORDERFLOW_INBOX_PUBLIC_URL",
        _text,
        "",
        "The inbox's URL as users reach it (https://host/inbox), for sign-in links; empty means"
        " http://ORDERFLOW_API_LISTEN/inbox. Never taken from a request's Host header.",
    ),
    Setting(
        "ORDERFLOW_INBOX_SMTP_URL",
        _smtp_url,
        "",
        "smtp://host:port of the relay that sends sign-in links: a channel of its own, never the"
        " ingest Postfix. Empty: no link is sent (the request page still answers the same).",
    ),
    Setting(
        "ORDERFLOW_INBOX_MAIL_FROM",
        _text,
        "orderflow-inbox@localhost",
        "From address of sign-in link emails.",
    ),
    Setting(
        "ORDERFLOW_INBOX_LINK_TTL",
        _inbox_link_ttl,
        "900",
        "Seconds a sign-in link stays valid (60 to 900).",
    ),
    Setting(
        "ORDERFLOW_INBOX_SESSION_HOURS",
        _at_least(1),
        "12",
        "Hours a sign-in session lasts.",
    ),
    Setting(
        "ORDERFLOW_INBOX_COOKIE_SECURE",
        _bool,
        "true",
        "Mark the session cookie Secure (HTTPS only); false only for a plain-HTTP dev stack.",
    ),
    # Operations.
    Setting(
        "ORDERFLOW_METRICS_LISTEN",
        _loopback_listen,
        "127.0.0.1:9464",
        "Where the Prometheus exporter listens; loopback only.",
    ),
    Setting(
        "ORDERFLOW_METRICS_HOST",
        _text,
        "",
        "This host's name in the shared Redis metrics (one hash per host, so that every"
        " exporter exports its own host's counts and sums across hosts stay true); empty means"
        " the system host name.",
    ),
    Setting(
        "ORDERFLOW_POSTFIX_CONFIG_DIR",
        _text,
        "/etc/postfix",
        "Postfix instance whose queue the CLI and exporter report on.",
    ),
    Setting(
        "ORDERFLOW_LOG_LEVEL",
        _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "INFO",
        "Least severe log level written.",
    ),
    Setting("ORDERFLOW_LOG_FILE", _text, "", "JSON log file; empty means standard error."),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def attribute_name(setting: str) -> str:
    """The Settings attribute of a setting: `ORDERFLOW_DATABASE_URL` -> `database_url`."""
    return setting.removeprefix("ORDERFLOW_").lower()


def read_env_file(path: str) -> dict[str, str]:
    """Parse ``KEY=value`` lines; quotes around a value are removed, nothing is expanded."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise SettingsError(f"{path}:{number}: expected KEY=value")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def config_path(explicit: str | None = None) -> str | None:
    """The env file to read: --config, then $ORDERFLOW_CONFIG, then the default if it exists."""
    if explicit:
        return explicit
    from_env = os.environ.get(CONFIG_PATH_VARIABLE)
    if from_env:
        return from_env
    return DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None


class Settings:
    """Validated settings: one typed attribute per row of SETTINGS, named after the setting
    without ORDERFLOW_, lower-case (`settings.database_url`). A misspelt name is a mypy error
    and an AttributeError, never a silent None; tests/test_settings.py checks that the
    annotations below and the table agree, row for row and type for type."""

    database_url: str
    migrate_database_url: str
    redis_url: str
    s3_endpoint_url: str
    s3_bucket: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str
    backend_timeout: float
    ingest_domains: tuple[str, ...]
    local_part: str
    deliver_socket: str
    deliver_socket_group: str
    deliver_timeout: float
    spool_dir: str
    min_free_mb: int
    max_header_bytes: int
    deliver_workers: int
    attachment_queue: str
    extraction_queue: str
    extraction_function: str
    job_timeout: int
    max_mime_depth: int
    max_documents_per_message: int
    milter_socket: str
    authserv_id: str
    dmarc_policy: str
    tempfail_on_dns_error: bool
    dns_timeout: float
    dns_servers: tuple[str, ...]
    dns_cache_bytes: int
    dns_cache_max_ttl: int
    public_suffix_list: str
    dkim_l_policy: str
    org_cache_ttl: float
    domain_mx_hosts: tuple[str, ...]
    domain_confirmations: int
    domain_mx_grace: float
    domain_check_interval: float
    milter_lookup_timeout: float
    milter_user: str
    milter_socket_group: str
    webhook_retry_schedule: tuple[float, ...]
    webhook_jitter: float
    webhook_retry_after_max: float
    webhook_disable_after: float
    webhook_secret_grace: float
    webhook_connect_timeout: float
    webhook_timeout: float
    webhook_allow: tuple[str, ...]
    webhook_require_https: bool
    webhook_concurrency: int
    webhook_poll_interval: float
    api_base_url: str
    event_retention_days: int
    retention_days: int
    api_listen: str
    api_allow_public_bind: bool
    api_link_ttl: int
    inbox_public_url: str
    inbox_smtp_url: str
    inbox_mail_from: str
    inbox_link_ttl: int
    inbox_session_hours: int
    inbox_cookie_secure: bool
    metrics_listen: str
    metrics_host: str
    postfix_config_dir: str
    log_level: str
    log_file: str

    def __init__(self, values: Mapping[str, Any], source: str | None):
        self._values = dict(values)
        self.source = source
        for name, value in self._values.items():
            if name in _BY_NAME:
                setattr(self, attribute_name(name), value)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def migrate_url(self) -> str:
        """The schema owner's URL; set only in settings from load_migrate_settings."""
        return self._values[MIGRATE_URL_SETTING] or self.database_url

    def with_migrate_url(self, url: str) -> Settings:
        return Settings({**self._values, MIGRATE_URL_SETTING: url}, self.source)

    @property
    def effective_authserv_id(self) -> str:
        return self.authserv_id or self.ingest_domains[0]


def load_settings(
    explicit_path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate every setting; the first problem raises SettingsError naming it."""
    environ = os.environ if environ is None else environ
    path = config_path(explicit_path)
    raw: dict[str, str] = {}
    if path is not None:
        try:
            raw.update(read_env_file(path))
        except OSError as error:
            raise SettingsError(f"cannot read config file {path}: {error.strerror}") from None
    if MIGRATE_URL_SETTING in raw:
        raise SettingsError(
            f"{MIGRATE_URL_SETTING} must not be in {path}: every service reads that file; put"
            f" the schema owner's URL in {DEFAULT_MIGRATE_CONFIG_PATH} (root, mode 0600), which"
            " only `db migrate` reads"
        )
    raw.update(
        {
            key: value
            for key, value in environ.items()
            if key.startswith("ORDERFLOW_") and key != MIGRATE_URL_SETTING
        }
    )
    unknown = sorted(
        key
        for key in raw
        if key not in _BY_NAME and key != CONFIG_PATH_VARIABLE and not key.startswith(DEV_PREFIX)
    )
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} (in {path or 'environment'})")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        text = raw.get(setting.name, setting.default)
        if text is None or (setting.default is None and not text.strip()):
            raise SettingsError(f"{setting.name} is required: {setting.doc}")
        try:
            values[setting.name] = setting.parse(text)
        except ValueError as error:
            raise SettingsError(f"{setting.name}={text!r} is invalid: {error}") from None
    if not values["ORDERFLOW_INGEST_DOMAINS"]:
        raise SettingsError("ORDERFLOW_INGEST_DOMAINS is required: name at least one domain")
    if not values["ORDERFLOW_API_ALLOW_PUBLIC_BIND"] and not is_loopback_listen(
        values["ORDERFLOW_API_LISTEN"]
    ):
        raise SettingsError(
            f"ORDERFLOW_API_LISTEN={values['ORDERFLOW_API_LISTEN']!r} is not loopback: put the"
            " API behind a TLS proxy, or set ORDERFLOW_API_ALLOW_PUBLIC_BIND=true"
        )
    return Settings(values, path)


def load_migrate_settings(
    explicit_path: str | None = None,
    migrate_path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The settings of `db migrate`: the services' file plus the schema owner's URL.

    The owner's URL comes from $ORDERFLOW_MIGRATE_DATABASE_URL, else from `migrate_path`
    (default /etc/orderflow/migrate.env when it exists), a file that may hold nothing else.
    """
    environ = os.environ if environ is None else environ
    settings = load_settings(explicit_path, environ)
    path = migrate_path or (
        DEFAULT_MIGRATE_CONFIG_PATH if os.path.exists(DEFAULT_MIGRATE_CONFIG_PATH) else None
    )
    url = ""
    if path is not None:
        try:
            values = read_env_file(path)
        except OSError as error:
            raise SettingsError(
                f"cannot read migrate config file {path}: {error.strerror}"
            ) from None
        other = sorted(set(values) - {MIGRATE_URL_SETTING})
        if other:
            raise SettingsError(f"{path} may hold only {MIGRATE_URL_SETTING}, not {other[0]}")
        url = values.get(MIGRATE_URL_SETTING, "")
    return settings.with_migrate_url(environ.get(MIGRATE_URL_SETTING) or url)
