"""`doctor`: is this mail host able to take orders right now? One line per check.

Each check is independent and bounded in time, so one dead backend does not hide the state of
the others. FAIL means mail is (or will be) deferred or lost until someone acts; WARN means
something an operator should know but that does not stop intake (no RQ worker anywhere, disk
getting full, postfix check warnings).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orderflow_ingest.ops import mx_checks
from orderflow_ingest.ops.checks import FAIL, OK, SKIP, WARN, Check
from orderflow_ingest.ops.probes import unix_socket_listening
from orderflow_ingest.settings import Settings
from orderflow_ingest.webhooks.health import check_webhooks

COMMAND_TIMEOUT = 20.0
SOCKET_TIMEOUT = 5.0

# Milter protocol (libmilter's mfdef.h): option negotiation then quit, nothing else.
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
MILTER_VERSION = 6
MILTER_ACTIONS = 0x1FF
MILTER_PROTOCOL = 0x1FFFFF


def run(command: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(command[0]) or f"/usr/sbin/{command[0]}"
    return subprocess.run(
        [binary, *command[1:]],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def postconf(config_dir: str, name: str) -> str:
    result = run(["postconf", "-c", config_dir, "-h", name])
    if result.returncode != 0:
        raise RuntimeError(_last_line(result.stderr) or f"postconf {name} failed")
    return result.stdout.strip()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- Backends ----------------------------------------------------------------------------


def check_database(settings: Settings) -> list[Check]:
    from orderflow_ingest.db import connect, runtime_rights_problems, schema_is_current

    try:
        with connect(settings.database_url, timeout=SOCKET_TIMEOUT) as conn:
            row = conn.execute("SELECT current_setting('server_version') AS v").fetchone()
            current = schema_is_current(conn)
            problems = runtime_rights_problems(conn)
    except Exception as error:
        detail = f"unreachable: {_error(error)}"
        return [Check("postgresql", FAIL, detail), Check("migrations", SKIP, "no database")]
    version = row["v"] if row else "?"
    migrations = (
        Check("migrations", OK, "schema is current")
        if current
        else Check("migrations", FAIL, "pending migrations: run `orderflow-ingest db migrate`")
    )
    rights = (
        Check(
            "database rights",
            FAIL,
            "the role of ORDERFLOW_DATABASE_URL " + ", ".join(problems) + ": services must use"
            " the runtime role with only sql/grants.sql's rights (docs/database-rights.md)",
        )
        if problems
        else Check("database rights", OK, "runtime role: row rights only, no schema")
    )
    return [Check("postgresql", OK, f"PostgreSQL {version}"), migrations, rights]


def check_redis(settings: Settings) -> list[Check]:
    from redis import Redis
    from rq import Queue, Worker

    client = Redis.from_url(
        settings.redis_url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
        workers = Worker.count(
            connection=client, queue=Queue(settings.attachment_queue, connection=client)
        )
        depth = Queue(settings.attachment_queue, connection=client).count
    except Exception as error:
        return [
            Check("redis", FAIL, f"unreachable: {_error(error)}"),
            Check("rq workers", SKIP, "no redis"),
        ]
    finally:
        client.close()
    worker_check = (
        Check("rq workers", OK, f"{workers} on {settings.attachment_queue}, {depth} queued")
        if workers
        else Check(
            "rq workers",
            WARN,
            f"no worker on {settings.attachment_queue} anywhere ({depth} queued):"
            " start `orderflow-ingest worker`",
        )
    )
    return [Check("redis", OK, f"Redis {version}"), worker_check]


def check_s3(settings: Settings) -> list[Check]:
    from orderflow_ingest.storage import make_client

    try:
        client = make_client(settings)
        client.head_bucket(Bucket=settings.s3_bucket)
    except Exception as error:
        return [Check("s3", FAIL, f"bucket {settings.s3_bucket}: {_error(error)}")]
    endpoint = settings.s3_endpoint_url or "AWS"
    return [Check("s3", OK, f"bucket {settings.s3_bucket} at {endpoint}")]


# --- Postfix -----------------------------------------------------------------------------


def check_postfix(settings: Settings) -> list[Check]:
    config_dir = settings.postfix_config_dir
    if not Path(config_dir, "main.cf").is_file():
        return [Check("postfix", FAIL, f"no main.cf in {config_dir}")]
    checks: list[Check] = []
    if os.geteuid() == 0:
        result = run(["postfix", "-c", config_dir, "check"])
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            checks.append(Check("postfix check", FAIL, _last_line(output) or "failed"))
        elif output:
            checks.append(Check("postfix check", WARN, _last_line(output)))
        else:
            checks.append(Check("postfix check", OK, f"{config_dir}: no problems"))
    else:
        checks.append(Check("postfix check", SKIP, "needs root"))
    checks.append(_check_transport(settings))
    checks.extend(_check_milter_config(settings))
    checks.append(_check_local_submission(settings))
    return checks


def _check_local_submission(settings: Settings) -> Check:
    """Mail submitted with sendmail/postdrop skips smtpd and so the milter: an ingest address
    would get it with no verdict. postfix-config refuses all local submission."""
    try:
        users = postconf(settings.postfix_config_dir, "authorized_submit_users").strip()
    except Exception as error:
        return Check("local submission", FAIL, f"postconf: {_error(error)}")
    if users:
        detail = (
            f"authorized_submit_users = {users}: sendmail would deliver to ingest addresses "
            "without the milter; set it empty (postfix-config/README.md)"
        )
        return Check("local submission", FAIL, detail)
    return Check("local submission", OK, "refused (authorized_submit_users is empty)")


def _is_deliver_client(word: str) -> bool:
    """`orderflow-ingest deliver`, or the compiled client it execs (what pipe(8) runs)."""
    return word == "deliver" or word.endswith("/orderflow-deliver")


def _option(words: list[str], name: str) -> str | None:
    for index, word in enumerate(words[:-1]):
        if word == name:
            return words[index + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _check_transport(settings: Settings) -> Check:
    """Every ingest domain routes to a pipe(8) service of master.cf that runs `deliver`."""
    config_dir = settings.postfix_config_dir
    try:
        maps = [m for m in postconf(config_dir, "transport_maps").replace(",", " ").split() if m]
    except Exception as error:
        return Check("transport", FAIL, f"postconf: {_error(error)}")
    routes: list[str] = []
    for domain in settings.ingest_domains:
        transport = None
        for table in maps:
            result = run(["postmap", "-c", config_dir, "-q", domain, table])
            if result.returncode == 0 and result.stdout.strip():
                transport = result.stdout.strip()
                break
        if transport is None:
            return Check("transport", FAIL, f"{domain}: no entry in transport_maps {maps}")
        service = transport.split(":", 1)[0]
        master = run(["postconf", "-c", config_dir, "-M", f"{service}/unix"])
        entry = master.stdout.strip()
        if not entry:
            detail = f"{domain} -> {transport}, but master.cf has no {service}"
            return Check("transport", FAIL, detail)
        words = entry.split()
        if "pipe" not in words[:8] or not any(_is_deliver_client(word) for word in words):
            return Check(
                "transport", FAIL, f"{domain} -> {service}, which is not the pipe to `deliver`"
            )
        client = next(word.partition("=")[2] or word for word in words if _is_deliver_client(word))
        if client.startswith("/") and not os.access(client, os.X_OK):
            # Postfix would defer every message: "temporary failure" with no other clue.
            detail = f"{client} is missing or not executable: run orderflow-ingest build-deliver"
            return Check("transport", FAIL, detail)
        config = _option(words, "--config")
        if config and settings.source and Path(config) != Path(settings.source):
            return Check(
                "transport",
                WARN,
                f"the pipe reads {config}, this check read {settings.source}: are they the same?",
            )
        routes.append(f"{domain} -> {transport}")
    return Check("transport", OK, ", ".join(routes) + " (pipe to deliver)")


def postfix_milter_spec(milter_socket: str) -> str:
    """Our milter socket setting as Postfix writes it in smtpd_milters."""
    if milter_socket.startswith("inet:"):
        port, _, host = milter_socket[len("inet:") :].partition("@")
        return f"inet:{host or '127.0.0.1'}:{port}"
    if milter_socket.startswith("unix:"):
        return milter_socket
    return f"unix:{milter_socket}"


def _check_milter_config(settings: Settings) -> list[Check]:
    config_dir = settings.postfix_config_dir
    expected = postfix_milter_spec(settings.milter_socket)
    try:
        smtpd = postconf(config_dir, "smtpd_milters").replace(",", " ").split()
        non_smtpd = postconf(config_dir, "non_smtpd_milters").replace(",", " ").split()
        default_action = postconf(config_dir, "milter_default_action")
    except Exception as error:
        return [Check("milter config", FAIL, f"postconf: {_error(error)}")]
    if expected not in smtpd:
        return [Check("milter config", FAIL, f"{expected} is not in smtpd_milters ({smtpd})")]
    if expected in non_smtpd:
        return [Check("milter config", FAIL, f"{expected} is in non_smtpd_milters too")]
    if default_action != "tempfail":
        return [
            Check(
                "milter config",
                FAIL,
                f"milter_default_action = {default_action}: a dead milter would let mail past"
                " its checks (or stop the SMTP service); set tempfail",
            )
        ]
    return [Check("milter config", OK, f"smtpd_milters has {expected}, default action tempfail")]


# --- Sockets -----------------------------------------------------------------------------


def _milter_packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("milter closed the connection")
        data += chunk
    return data


def milter_handshake(spec: str, timeout: float = SOCKET_TIMEOUT) -> int:
    """Connect, negotiate options as Postfix does, quit; returns the milter's version."""
    postfix_spec = postfix_milter_spec(spec)
    if postfix_spec.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = postfix_spec[len("unix:") :]
    else:
        host, _, port = postfix_spec[len("inet:") :].rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        address = (host.strip("[]"), int(port))
    sock.settimeout(timeout)
    with sock:
        sock.connect(address)
        payload = struct.pack("!III", MILTER_VERSION, MILTER_ACTIONS, MILTER_PROTOCOL)
        sock.sendall(_milter_packet(SMFIC_OPTNEG, payload))
        (length,) = struct.unpack("!I", _recv_exact(sock, 4))
        reply = _recv_exact(sock, length)
        if reply[:1] != SMFIC_OPTNEG or len(reply) < 13:
            raise ConnectionError(f"unexpected milter reply {reply[:1]!r}")
        (version,) = struct.unpack("!I", reply[1:5])
        sock.sendall(_milter_packet(SMFIC_QUIT))
    return int(version)


def check_public_suffix_list(settings: Settings) -> Check:
    """The list DMARC's organizational domains come from: the milter refuses to start
    without it (no "last two labels" guess, which aligns victim.co.uk with evil.co.uk)."""
    from orderflow_ingest.milter.orgdomain import PublicSuffixListError, load

    path = settings.public_suffix_list
    try:
        psl = load(path)
    except PublicSuffixListError as error:
        return Check("public suffix", FAIL, str(error))
    return Check("public suffix", OK, f"{path}: {len(psl.rules)} rules")


def check_milter_socket(settings: Settings) -> Check:
    try:
        version = milter_handshake(settings.milter_socket)
    except Exception as error:
        return Check("milter socket", FAIL, f"{settings.milter_socket}: {_error(error)}")
    return Check(
        "milter socket", OK, f"{settings.milter_socket} answers (milter protocol {version})"
    )


def check_deliver_socket(settings: Settings) -> Check:
    """The delivery service listens. Checked in /proc rather than by connecting: a connection
    that sends no envelope would be logged and counted as a failed delivery."""
    path = settings.deliver_socket
    if not os.path.exists(path):
        return Check("deliver socket", FAIL, f"{path} does not exist: is deliver-service running?")
    try:
        listening = unix_socket_listening(path)
    except OSError as error:
        return Check("deliver socket", WARN, f"{path} exists; cannot read /proc/net/unix: {error}")
    if not listening:
        return Check("deliver socket", FAIL, f"{path} exists but nothing listens on it")
    return Check("deliver socket", OK, f"{path}: deliver-service listening")


def check_deliver_timeout(settings: Settings) -> Check:
    """ORDERFLOW_DELIVER_TIMEOUT ends before pipe(8)'s time limit (else: bounces, not retries);
    the delivery service refuses to start on the same condition."""
    from orderflow_ingest.pipe.limits import deliver_timeout_problem, read_pipe_limits
    from orderflow_ingest.settings import SettingsError

    try:
        limits = read_pipe_limits(settings)
    except SettingsError as error:
        return Check("deliver timeout", FAIL, str(error))
    problem = deliver_timeout_problem(settings, limits)
    if problem is not None:
        return Check("deliver timeout", FAIL, problem)
    detail = f"{settings.deliver_timeout:g}s, within pipe(8)'s limit of {limits.time_limit:g}s"
    return Check("deliver timeout", OK, detail)


# --- Disk and exporter -------------------------------------------------------------------


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(value)


def check_disk(name: str, path: str, min_free: int) -> Check:
    """Free space and the headroom above `min_free` (ORDERFLOW_MIN_FREE_MB: under it the
    milter answers 452 at MAIL FROM and the delivery service defers)."""
    try:
        stat = os.statvfs(path)
    except OSError as error:
        return Check(name, FAIL, f"{path}: {error.strerror}")
    free = stat.f_bavail * stat.f_frsize
    size = stat.f_blocks * stat.f_frsize
    percent = 100.0 * free / size if size else 0.0
    detail = f"{path}: {_bytes(free)} free of {_bytes(size)} ({percent:.0f}%)"
    if min_free > 0 and free >= min_free:
        detail += f", {_bytes(free - min_free)} above the {_bytes(min_free)} threshold"
    if free < min_free:
        return Check(
            name,
            FAIL,
            f"{detail}, below the {_bytes(min_free)} threshold: new mail gets 452 4.3.1"
            " (ORDERFLOW_MIN_FREE_MB)",
        )
    if free < 2 * min_free or percent < 10:
        return Check(name, WARN, f"{detail}, getting full")
    return Check(name, OK, detail)


def check_disks(settings: Settings, min_free: int) -> list[Check]:
    checks = [check_disk("spool disk", settings.spool_dir, min_free)]
    try:
        queue_dir = postconf(settings.postfix_config_dir, "queue_directory")
    except Exception as error:
        checks.append(Check("postfix queue disk", FAIL, f"queue_directory: {_error(error)}"))
        return checks
    checks.append(check_disk("postfix queue disk", queue_dir, min_free))
    checks.append(check_queue_minfree(settings, min_free))
    return checks


def check_queue_minfree(settings: Settings, min_free: int) -> Check:
    """Postfix's own floor (queue_minfree, and never under 1.5 x message_size_limit) sits
    below ours, so senders meet the milter's 452 first (postfix-config/README.md)."""
    from orderflow_ingest.diskspace import postfix_floor

    config_dir = settings.postfix_config_dir
    try:
        minfree = int(postconf(config_dir, "queue_minfree"))
        size_limit = int(postconf(config_dir, "message_size_limit"))
    except Exception as error:
        return Check("queue_minfree", WARN, f"postconf: {_error(error)}")
    floor = postfix_floor(minfree, size_limit)
    detail = (
        f"queue_minfree = {_bytes(minfree)}, message_size_limit = {_bytes(size_limit)};"
        f" Postfix refuses mail under {_bytes(floor)}"
    )
    if minfree < 1.5 * size_limit:
        return Check(
            "queue_minfree",
            WARN,
            f"{detail}: set queue_minfree to at least 1.5 x message_size_limit"
            " (postfix-config/main.cf)",
        )
    if 0 < min_free <= floor:
        return Check(
            "queue_minfree",
            WARN,
            f"{detail}, not under ORDERFLOW_MIN_FREE_MB ({_bytes(min_free)}): Postfix's 452"
            " comes first, without our log line and metric; raise ORDERFLOW_MIN_FREE_MB",
        )
    return Check("queue_minfree", OK, f"{detail}, under ours ({_bytes(min_free)})")


def check_exporter(settings: Settings) -> Check:
    url = f"http://{settings.metrics_listen}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=SOCKET_TIMEOUT) as response:
            response.read(1)
    except Exception as error:
        return Check("exporter", WARN, f"{url}: {_error(error)} (is `exporter` running?)")
    return Check("exporter", OK, f"{url} answers")


def check_api(settings: Settings, listen: str | None = None) -> Check:
    """The HTTP API answers its OpenAPI document (a WARN: hosts may run it elsewhere)."""
    host, _, port = (listen or settings.api_listen).rpartition(":")
    url = f"http://{host}:{port}/v1/openapi.json"
    try:
        with urllib.request.urlopen(url, timeout=SOCKET_TIMEOUT) as response:
            if response.status != 200:
                return Check("api", WARN, f"{url}: HTTP {response.status}")
    except Exception as error:
        return Check("api", WARN, f"{url}: {_error(error)} (is `api` running?)")
    return Check("api", OK, f"{url} answers")


def check_public_face(settings: Settings) -> list[Check]:
    """The smtpd certificate and the DNS a sender reads (MX, PTR) for this host's name."""
    config_dir = settings.postfix_config_dir
    if not Path(config_dir, "main.cf").is_file():
        return [Check("tls certificate", SKIP, f"no main.cf in {config_dir}")]
    hostname = postconf(config_dir, "myhostname")
    checks: list[Check] = []
    if postconf(config_dir, "smtpd_tls_security_level") in ("", "none"):
        checks.append(Check("tls certificate", WARN, "smtpd TLS is off (smtpd_tls_security_level)"))
    else:
        cert_file = postconf(config_dir, "smtpd_tls_cert_file")
        checks.append(mx_checks.check_certificate(cert_file, hostname))
    resolver = mx_checks.make_resolver(settings.dns_servers)
    checks.extend(mx_checks.check_dns(resolver, settings.ingest_domains, hostname))
    return checks


def _error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def run_checks(settings: Settings, min_free: int | None = None) -> list[Check]:
    """min_free: bytes; None means ORDERFLOW_MIN_FREE_MB, the threshold the milter and the
    delivery service act on."""
    if min_free is None:
        from orderflow_ingest.diskspace import min_free_bytes

        min_free = min_free_bytes(settings.min_free_mb)
    source = settings.source or "environment only"
    checks = [Check("settings", OK, f"loaded from {source}")]
    steps: list[Callable[[], list[Check] | Check]] = [
        lambda: check_database(settings),
        lambda: check_redis(settings),
        lambda: check_s3(settings),
        lambda: check_postfix(settings),
        lambda: check_public_suffix_list(settings),
        lambda: check_milter_socket(settings),
        lambda: check_deliver_socket(settings),
        lambda: check_deliver_timeout(settings),
        lambda: check_disks(settings, min_free),
        lambda: check_exporter(settings),
        lambda: check_webhooks(settings),
        lambda: check_api(settings),
        lambda: check_public_face(settings),
    ]
    for step in steps:
        try:
            result = step()
        except Exception as error:  # a bug in a check must not hide the other checks
            result = Check("doctor", FAIL, f"check crashed: {_error(error)}")
        checks.extend(result if isinstance(result, list) else [result])
    return checks


def failed(checks: list[Check]) -> bool:
    return any(check.status == FAIL for check in checks)
