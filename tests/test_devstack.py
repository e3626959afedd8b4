"""The local stack itself: every component answers, Postfix runs the shipped config and refuses
what an MX must refuse, servers restart on the same port with their data, and the `dev` CLI
leaves nothing behind.
"""

from __future__ import annotations

import os
import shlex
import smtplib
import subprocess
import sys
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orderflow_ingest.devstack.errors import StackError
from orderflow_ingest.devstack.processes import ProcessRef
from orderflow_ingest.devstack.stack import Stack, StackOptions
from orderflow_ingest.devstack.templates import MAIN_CF_LINE, postfix_config_dir
from orderflow_ingest.pipe.build import client_path

pytestmark = pytest.mark.stack

SIZE_LIMIT = 26214400
FOREIGN = "someone@other.example"


def _message(**headers: str) -> EmailMessage:
    fields = {"From": "buyer@customer.example", "To": "orders+acme@orderflow.test"}
    fields["Subject"] = "devstack test"
    fields.update({name.replace("_", "-"): value for name, value in headers.items()})
    msg = EmailMessage()
    for name, value in fields.items():
        msg[name] = value
    msg.set_content("hello\n")
    return msg


def _listen_addresses(pid: int) -> set[str]:
    """Local addresses of the TCP sockets `pid` listens on, read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.add(fields[1].split(":")[0])
    return found


def _postconf(stack: Stack) -> dict[str, str]:
    out = subprocess.run(
        ["/usr/sbin/postconf", "-c", str(stack.postfix_config_dir), "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(
        line.split(" = ", 1) if " = " in line else (line[:-2], "") for line in out.splitlines()
    )


# --- every component answers ------------------------------------------------------------------


def test_database_has_schema_orgs_and_separate_roles(stack: Stack, db: Any) -> None:
    slugs = {row["slug"] for row in db.execute("SELECT slug::text AS slug FROM org")}
    assert {"acme", "globex", "disabled-co"} <= slugs
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("CREATE TABLE intruder (id int)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("DELETE FROM org")


def test_redis_and_s3_answer_with_credentials(stack: Stack, redis_conn: Any, s3: Any) -> None:
    assert redis_conn.ping()
    s3.head_bucket(Bucket=stack.settings.s3_bucket)
    key = f"devstack/{uuid.uuid4()}"
    s3.put_object(Bucket=stack.settings.s3_bucket, Key=key, Body=b"x")
    assert s3.get_object(Bucket=stack.settings.s3_bucket, Key=key)["Body"].read() == b"x"


def test_s3_refuses_a_wrong_secret(stack: Stack) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=stack.settings.s3_endpoint_url,
        aws_access_key_id=stack.settings.s3_access_key,
        aws_secret_access_key="wrong-" + stack.settings.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError):
        client.head_bucket(Bucket=stack.settings.s3_bucket)
    client.close()


def test_postfix_advertises_the_limits_and_tls(stack: Stack) -> None:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="client.example") as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        assert smtp.esmtp_features["size"] == str(SIZE_LIMIT)
        assert "starttls" in smtp.esmtp_features
        assert "vrfy" not in smtp.esmtp_features
        assert smtp.verify("orders+acme@orderflow.test")[0] == 502


def test_every_server_listens_on_loopback_only(stack: Stack) -> None:
    loopback = {"0100007F", "00000000000000000000000001000000"}
    for name, data in stack.ctx.state.processes.items():
        ref = ProcessRef.from_dict(data)
        assert ref.alive(), name
        addresses = _listen_addresses(ref.pid)
        assert addresses <= loopback, f"{name} listens on {addresses}"


def test_services_run_unprivileged(stack: Stack) -> None:
    import pwd

    ref = ProcessRef.from_dict(stack.ctx.state.processes["deliver"])
    uid = os.stat(f"/proc/{ref.pid}").st_uid
    assert pwd.getpwuid(uid).pw_name == stack.options.service_user
    mode = stack.config_path.stat().st_mode & 0o777
    assert mode == 0o640, "the env file holds passwords: never world-readable"


# --- Postfix runs the shipped configuration ---------------------------------------------------


def test_postfix_runs_the_shipped_main_cf(stack: Stack) -> None:
    """Every setting of postfix-config/main.cf is live, except the few the dev overlay names."""
    live = _postconf(stack)
    shipped = (postfix_config_dir() / "main.cf").read_text().splitlines()
    # loopback-only stack, milter off in this stack, retries in seconds instead of minutes
    overlay = {"smtpd_milters", "mynetworks", "queue_run_delay", "minimal_backoff_time"}
    overlay |= {"maximal_backoff_time", "delay_warning_time"}
    checked = 0
    for line in shipped:
        match = MAIN_CF_LINE.match(line)
        if not match or match.group(1) in overlay:
            continue
        name, value = match.group(1), line.split("=", 1)[1].strip()
        if "{{" in value:
            assert name in live, name
        else:
            assert live.get(name, "") == value, name
        checked += 1
    assert checked > 40
    assert live["orderflow_destination_recipient_limit"] == "1"
    assert live["recipient_delimiter"] == "+"
    assert live["smtpd_relay_restrictions"] == "reject_unauth_destination"
    assert live["milter_default_action"] == "tempfail"
    assert live["non_smtpd_milters"] == ""


def test_pipe_transport_is_the_shipped_master_cf(stack: Stack) -> None:
    master = (stack.postfix_config_dir / "master.cf").read_text()
    assert "orderflow unix" in master
    assert f"user={stack.options.service_user} " in master
    client = client_path()
    assert f"argv={client} --config {stack.config_path} --sender ${{sender}}" in master
    assert client.stat().st_mode & 0o777 == 0o755  # the pipe user runs it
    assert "-- ${original_recipient}" in master
    transport = (stack.postfix_config_dir / "orderflow_transport").read_text()
    assert "orderflow.test    orderflow:" in transport


# --- what an MX must refuse -------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["buyer@customer.example", "orders+acme@orderflow.test", ""])
def test_relaying_to_a_foreign_domain_is_refused(stack: Stack, send_mail: Any, sender: str) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send_mail(stack, _message(To=FOREIGN), [FOREIGN], mail_from=sender)
    ((code, text),) = refused.value.recipients.values()
    assert code == 554
    assert b"5.7.1" in text and b"Relay access denied" in text


def test_declared_size_above_the_limit_is_refused_at_mail_from(stack: Stack) -> None:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="client.example") as smtp:
        smtp.ehlo()
        code, text = smtp.mail("buyer@customer.example", [f"SIZE={SIZE_LIMIT + 1}"])
        assert code == 552, text
        assert b"5.3.4" in text


@pytest.mark.slow
def test_oversized_data_without_size_declaration_is_refused_with_552(stack: Stack) -> None:
    body = b"x" * 998 + b"\r\n"
    raw = b"Subject: too big\r\nFrom: buyer@customer.example\r\n\r\n" + body * (
        SIZE_LIMIT // len(body) + 10
    )
    before = len(stack.postqueue())
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="client.example") as smtp:
        smtp.ehlo()
        assert smtp.mail("buyer@customer.example")[0] == 250  # no SIZE= parameter
        assert smtp.rcpt("orders+acme@orderflow.test")[0] == 250
        code, text = smtp.data(raw)
    assert code == 552, text
    assert b"5.3.4" in text
    assert len(stack.postqueue()) == before


def test_postfix_adds_no_message_id(stack: Stack) -> None:
    """Dedup and the synthetic Message-ID are ours: Postfix must not invent one (loopback
    clients would otherwise count as local and get one)."""
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, local_hostname="client.example") as smtp:
        smtp.ehlo()
        smtp.mail("buyer@customer.example")
        smtp.rcpt("orders+acme@orderflow.test")
        code, text = smtp.data(_message().as_bytes())
    assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[1]
    stack.wait_for_empty_queue(30)
    cleanup = [
        line
        for line in stack.maillog_path.read_text().splitlines()
        if f"{queue_id}: message-id=" in line
    ]
    assert cleanup and cleanup[0].endswith("message-id=<>")


# --- restarts keep port and data --------------------------------------------------------------


def test_s3_restart_keeps_bucket_data_and_port(stack: Stack, s3: Any) -> None:
    bucket = stack.settings.s3_bucket
    key = f"devstack/restart-{uuid.uuid4()}"
    s3.put_object(Bucket=bucket, Key=key, Body=b"survives")
    endpoint = stack.settings.s3_endpoint_url
    stack.stop_component("s3")
    assert not stack.running("s3")
    stack.start_component("s3")
    assert stack.running("s3")
    assert stack.env["ORDERFLOW_S3_ENDPOINT_URL"] == endpoint
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"survives"


def test_redis_restart_keeps_queued_data(stack: Stack, redis_conn: Any) -> None:
    key = f"devstack:restart:{uuid.uuid4()}"
    redis_conn.rpush(key, "job")
    stack.restart_component("redis")
    assert redis_conn.lrange(key, 0, -1) == [b"job"]
    redis_conn.delete(key)


def test_postgres_restart_keeps_rows(stack: Stack, settings: Any) -> None:
    stack.restart_component("postgres")
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM org").fetchone()[0] >= 3  # type: ignore[index]


def test_postfix_restart_while_postgres_runs_keeps_its_port(stack: Stack) -> None:
    """Postfix's configuration names PostgreSQL's port (custom domains through proxy:pgsql:):
    rendering it again must read that port, not claim it (it is PostgreSQL's, and in use)."""
    assert stack.running("postgres")
    port = stack.smtp_port
    stack.restart_component("postfix")
    assert stack.running("postfix") and stack.smtp_port == port
    with smtplib.SMTP(stack.smtp_host, port, timeout=30) as smtp:
        assert smtp.ehlo()[0] == 250


def test_unknown_component_is_a_clear_error(stack: Stack) -> None:
    with pytest.raises(Exception, match="unknown component"):
        stack.stop_component("mysql")


# --- the `dev` command line -------------------------------------------------------------------


def _dev(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.prefix) / "bin" / "orderflow-ingest"), "dev", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def _exports(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        assert line.startswith("export "), line
        name, _, value = line[len("export ") :].partition("=")
        (values[name],) = shlex.split(value)
    return values


@pytest.mark.slow
def test_dev_up_env_down_leave_no_process_behind(stack: Stack, tmp_path: Path) -> None:
    """`dev up` starts the whole system by default (the milter and the API with the inbox on a
    loopback port included); `dev down` stops all of it. `--workers 0`: this stack shares the
    session's Redis, where a worker of its own would take the session's queued jobs (the
    default of one worker is checked in test_devstack_api.py, and by the demo's test)."""
    import httpx

    base = Path("/tmp") / f"orderflow-cli-{uuid.uuid4().hex[:8]}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORDERFLOW_")}
    env["ORDERFLOW_REDIS_URL"] = stack.settings.redis_url  # an existing server: used, not started
    try:
        up = _dev("up", "--dir", str(base), "--workers", "0", env=env)
        assert up.returncode == 0, up.stderr
        exported = _exports(up.stdout)
        assert exported["ORDERFLOW_REDIS_URL"] == stack.settings.redis_url
        assert exported["ORDERFLOW_DEV_DIR"] == str(base)
        port = int(exported["ORDERFLOW_DEV_SMTP_PORT"])
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            assert smtp.ehlo()[0] == 250
        with psycopg.connect(exported["ORDERFLOW_DATABASE_URL"], connect_timeout=10) as conn:
            assert conn.execute("SELECT slug::text FROM org").fetchall() == [("acme",)]

        again = _dev("env", "--dir", str(base), env=env)
        assert again.returncode == 0, again.stderr
        assert _exports(again.stdout) == exported

        started = Stack.load(base)
        refs = [ProcessRef.from_dict(d) for d in started.ctx.state.processes.values()]
        assert set(started.ctx.state.processes) == {
            "postgres", "s3", "postfix", "deliver", "milter", "api",
        }  # fmt: skip
        assert exported["ORDERFLOW_API_LISTEN"] == started.api_url.removeprefix("http://")
        assert exported["ORDERFLOW_INBOX_PUBLIC_URL"] == started.inbox_url
        assert exported["ORDERFLOW_INBOX_COOKIE_SECURE"] == "false"
        signin = httpx.get(f"{started.inbox_url}/signin", timeout=30)
        assert signin.status_code == 200
        assert httpx.get(f"{started.api_url}/v1/messages", timeout=30).status_code == 401
        assert "--no-api" in _dev("up", "--help", env=env).stdout

        down = _dev("down", "--dir", str(base), env=env)
        assert down.returncode == 0, down.stderr
        assert [ref for ref in refs if ref.alive()] == []
        assert _processes_mentioning(str(base)) == []
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{started.inbox_url}/signin", timeout=5)
        assert stack.running("redis"), "dev down stopped a server it did not start"
    finally:
        _dev("down", "--dir", str(base), "--purge", env=env)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry}: {cmdline}")
    return found


# --- failures are clear and leave nothing behind ----------------------------------------------


def test_up_twice_starts_nothing_new(stack: Stack) -> None:
    before = dict(stack.ctx.state.processes)
    stack.up()
    assert stack.ctx.state.processes == before


def test_a_port_taken_while_stopped_is_a_clear_error(stack: Stack) -> None:
    import socket

    port = stack.ctx.port("redis.port")
    stack.stop_component("redis")
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StackError, match=f"port {port}.*in use"):
            stack.start_component("redis")
    finally:
        squatter.close()
        stack.start_component("redis")
    assert stack.running("redis")


@pytest.mark.slow
def test_a_failing_component_stops_the_stack_and_names_its_log() -> None:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="orderflow-fail-", dir="/tmp"))
    base.chmod(0o755)
    broken = StackOptions(extra_settings={"ORDERFLOW_DELIVER_SOCKET": "/nonexistent/d.sock"})
    failing = Stack(base, broken)
    try:
        with pytest.raises(StackError) as error:
            failing.up()
        assert error.value.component == "deliver"
        assert error.value.log == failing.component_log("deliver")
        refs = [ProcessRef.from_dict(d) for d in failing.ctx.state.processes.values()]
        assert [ref for ref in refs if ref.alive()] == []
        assert _processes_mentioning(str(base)) == []
    finally:
        failing.down()
        shutil.rmtree(base, ignore_errors=True)
