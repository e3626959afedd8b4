"""The daemon as a process: socket and permissions, signals, refusing a second instance, and
real answers through libmilter (a minimal milter-protocol client stands in for Postfix).

No database runs here, on purpose: every RCPT to our domain must then be 451, never 550.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from milter_client import MilterClient

from orderflow_ingest.milter.daemon import StartupError, parse_endpoint

VENV_BIN = Path(sys.executable).parent


def write_config(directory: Path, **extra: str) -> Path:
    values = {
        "ORDERFLOW_DATABASE_URL": "postgresql://nobody:x@127.0.0.1:1/none",
        "ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1/0",
        "ORDERFLOW_S3_BUCKET": "unused",
        "ORDERFLOW_INGEST_DOMAINS": "orders.test",
        "ORDERFLOW_MILTER_SOCKET": str(directory / "run" / "milter.sock"),
        "ORDERFLOW_LOG_FILE": str(directory / "milter.log"),
        "ORDERFLOW_BACKEND_TIMEOUT": "1",
        "ORDERFLOW_MILTER_LOOKUP_TIMEOUT": "1",
        "ORDERFLOW_DNS_SERVERS": "127.0.0.1:1",
        "ORDERFLOW_DNS_TIMEOUT": "0.5",
        **extra,
    }
    path = directory / "ingest.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def start(config: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    return subprocess.Popen(
        [str(VENV_BIN / "orderflow-ingest"), "milter", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def events(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def all_events(directory: Path) -> list[dict[str, object]]:
    """Events of the current log and of one rotated away (the SIGHUP test rotates it)."""
    return events(directory / "milter.log.1") + events(directory / "milter.log")


def wait_for_event(log: Path, name: str, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(log):
            if event["event"] == name:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {name} in {log}: {events(log)}")


def _socket_group() -> str:
    return "postfix" if _group_exists("postfix") else grp.getgrgid(os.getgid()).gr_name


def _start_daemon(directory: Path) -> subprocess.Popen[bytes]:
    config = write_config(directory, ORDERFLOW_MILTER_SOCKET_GROUP=_socket_group())
    process = start(config)
    wait_for_event(directory / "milter.log", "milter.started")
    return process


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """One daemon for the tests that leave it running (libmilter takes up to 5 s to stop)."""
    directory = tmp_path_factory.mktemp("milter")
    process = _start_daemon(directory)
    yield process, directory
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def test_socket_is_0660_with_the_configured_group(
    daemon: tuple[subprocess.Popen[bytes], Path],
) -> None:
    _process, directory = daemon
    info = (directory / "run" / "milter.sock").stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert grp.getgrgid(info.st_gid).gr_name == _socket_group()


def test_rcpt_answers_through_libmilter_with_the_database_down(
    daemon: tuple[subprocess.Popen[bytes], Path],
) -> None:
    _process, directory = daemon
    client = MilterClient(str(directory / "run" / "milter.sock"))
    try:
        protocol = client.negotiate()
        assert protocol & 0x1000  # connect is noreply
        client.connect()
        client.mail("buyer@sender.test")
        started = time.monotonic()
        assert (
            client.rcpt("orders+acme@orders.test") == "451 4.3.0 temporary failure, try again later"
        )
        assert time.monotonic() - started < 5
        assert client.rcpt("orders@orders.test") == "550 5.1.1 Unknown recipient"  # no DB needed
        # Another domain may be a custom domain (Postfix only lets relay domains through to
        # us): with the database down that is unknown, so it waits too rather than passing.
        assert (
            client.rcpt("someone@elsewhere.test") == "451 4.3.0 temporary failure, try again later"
        )
    finally:
        client.close()
    rcpt_events = [e for e in all_events(directory) if e["event"] == "milter.rcpt"]
    assert {e["reason"] for e in rcpt_events} == {"database_unavailable", "no_slug"}
    assert rcpt_events[0]["queue_id"] == "TESTQUEUEID"


def test_sighup_reopens_the_log_and_keeps_serving(
    daemon: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, directory = daemon
    log = directory / "milter.log"
    log.rename(directory / "milter.log.1")
    process.send_signal(signal.SIGHUP)
    wait_for_event(log, "milter.logs_reopened")
    assert process.poll() is None
    client = MilterClient(str(directory / "run" / "milter.sock"))
    client.negotiate()
    client.connect()
    client.mail("a@sender.test")
    assert client.rcpt("orders@orders.test") == "550 5.1.1 Unknown recipient"  # no DB needed
    client.close()


def test_second_instance_refuses_to_steal_the_socket(
    daemon: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, directory = daemon
    second = start(directory / "ingest.env")
    assert second.wait(timeout=20) == 71
    assert process.poll() is None
    assert (directory / "run" / "milter.sock").exists()
    failed = [e for e in all_events(directory) if e["event"] == "milter.start_failed"]
    assert "another milter is listening" in str(failed[0]["error"])


def test_sigterm_stops_cleanly_and_removes_the_socket(tmp_path: Path) -> None:
    process = _start_daemon(tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert not (tmp_path / "run" / "milter.sock").exists()
    assert wait_for_event(tmp_path / "milter.log", "milter.stopped")["status"] == 0


def test_bad_socket_setting_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, ORDERFLOW_MILTER_SOCKET="inet:8891@0.0.0.0")
    process = start(config)
    assert process.wait(timeout=20) == 78
    assert "loopback" in str(wait_for_event(tmp_path / "milter.log", "milter.start_failed"))


def test_item10_milter_refuses_to_start_without_a_public_suffix_list(tmp_path: Path) -> None:
    """No list, no DMARC guess: exit 78 before the socket exists, naming the setting, the
    path and the package (the "last two labels" fallback aligned victim.co.uk with
    evil.co.uk)."""
    missing = tmp_path / "no" / "public_suffix_list.dat"
    config = write_config(tmp_path, ORDERFLOW_PUBLIC_SUFFIX_LIST=str(missing))
    process = start(config)
    assert process.wait(timeout=20) == 78
    error = str(wait_for_event(tmp_path / "milter.log", "milter.start_failed")["error"])
    assert "ORDERFLOW_PUBLIC_SUFFIX_LIST" in error and str(missing) in error
    assert "publicsuffix" in error
    assert not (tmp_path / "run" / "milter.sock").exists()
    assert not any(event["event"] == "milter.started" for event in events(tmp_path / "milter.log"))


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("/run/orderflow/milter.sock", "unix:/run/orderflow/milter.sock"),
        ("unix:/run/m.sock", "unix:/run/m.sock"),
        ("local:/run/m.sock", "unix:/run/m.sock"),
        ("inet:8891@127.0.0.1", "inet:8891@127.0.0.1"),
    ],
)
def test_parse_endpoint(value: str, spec: str) -> None:
    assert parse_endpoint(value).spec == spec


@pytest.mark.parametrize("value", ["inet:8891@192.0.2.1", "inet:x@127.0.0.1", "relative.sock"])
def test_parse_endpoint_refuses(value: str) -> None:
    with pytest.raises(StartupError):
        parse_endpoint(value)


def test_item10_doctor_checks_the_public_suffix_list(tmp_path: Path) -> None:
    from orderflow_ingest.ops.doctor import FAIL, OK, check_public_suffix_list
    from orderflow_ingest.settings import load_settings

    default = load_settings(str(write_config(tmp_path)), environ={})
    assert check_public_suffix_list(default).status == OK  # Debian's publicsuffix, as shipped
    missing = tmp_path / "missing.dat"
    config = write_config(tmp_path, ORDERFLOW_PUBLIC_SUFFIX_LIST=str(missing))
    check = check_public_suffix_list(load_settings(str(config), environ={}))
    assert check.status == FAIL
    assert "ORDERFLOW_PUBLIC_SUFFIX_LIST" in check.detail and str(missing) in check.detail
