"""Issue 10 item 12, the pipe's configuration: the deliver socket must be an absolute path, and
ORDERFLOW_DELIVER_TIMEOUT must end before pipe(8)'s `orderflow_time_limit` (where Postfix kills
`deliver` and bounces the message) — refused at the delivery service's start, reported by
`doctor`. Postfix's values are read from the stack's real Postfix configuration with postconf.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from ops_support import cli_json

from orderflow_ingest.ops.doctor import check_deliver_timeout
from orderflow_ingest.pipe.limits import (
    CLIENT_GRACE,
    postfix_seconds,
    read_pipe_limits,
)
from orderflow_ingest.pipe.protocol import MESSAGE_MARGIN
from orderflow_ingest.settings import SettingsError, load_settings

BASE = {
    "ORDERFLOW_DATABASE_URL": "postgresql://x@127.0.0.1/x",
    "ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1",
    "ORDERFLOW_S3_BUCKET": "b",
    "ORDERFLOW_INGEST_DOMAINS": "orderflow.test",
}


@pytest.mark.parametrize(
    "value", ["", "deliver.sock", "run/deliver.sock", "./d.sock", "/" + "x" * 107]
)
def test_empty_or_relative_deliver_socket_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(SettingsError, match="ORDERFLOW_DELIVER_SOCKET"):
        load_settings(environ={**BASE, "ORDERFLOW_DELIVER_SOCKET": value})


def test_absolute_deliver_socket_is_taken() -> None:
    settings = load_settings(environ={**BASE, "ORDERFLOW_DELIVER_SOCKET": "/run/o/d.sock"})
    assert settings.deliver_socket == "/run/o/d.sock"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300s", 300), ("300", 300), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1w", 604800)],
)
def test_postfix_time_values(text: str, seconds: float) -> None:
    assert postfix_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-5s", "5 m", "$command_time_limit", "1.5s"])
def test_postfix_time_values_that_are_not(text: str) -> None:
    with pytest.raises(ValueError):
        postfix_seconds(text)


# --- Against the stack's Postfix configuration ----------------------------------------------


def postfix_copy(stack: Any, tmp: Path, main: dict[str, str], master_option: str = "") -> Path:
    """A copy of the stack's Postfix configuration with main.cf settings replaced and,
    optionally, a `-o` option added to the orderflow service in master.cf."""
    target = tmp / "postfix"
    target.mkdir()
    for name in ("main.cf", "master.cf"):
        shutil.copy(stack.postfix.config_dir / name, target / name)
    text = (target / "main.cf").read_text()
    for name, value in main.items():
        text, count = re.subn(rf"(?m)^{name}\s*=.*$", f"{name} = {value}", text)
        assert count == 1, name
    (target / "main.cf").write_text(text)
    if master_option:
        master = (target / "master.cf").read_text()
        master, count = re.subn(
            r"(?m)^(orderflow\s+unix\s.*\n)", rf"\1  -o {master_option}\n", master
        )
        assert count == 1
        (target / "master.cf").write_text(master)
    return target


def stack_settings(stack: Any, **overrides: str) -> Any:
    return load_settings(str(stack.config_path), environ=overrides)


@pytest.mark.stack
def test_pipe_limits_come_from_the_stacks_postfix(stack: Any) -> None:
    limits = read_pipe_limits(stack.settings)
    assert limits.time_limit == 300  # postfix-config/main.cf: orderflow_time_limit = 300s
    assert limits.message_size_limit == 26214400
    assert limits.max_message == 26214400 + MESSAGE_MARGIN


@pytest.mark.stack
def test_a_master_cf_override_of_the_time_limit_wins(stack: Any, tmp_path: Path) -> None:
    config = postfix_copy(stack, tmp_path, {}, master_option="orderflow_time_limit=60s")
    settings = stack_settings(stack, ORDERFLOW_POSTFIX_CONFIG_DIR=str(config))
    assert read_pipe_limits(settings).time_limit == 60


def start_service(stack: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`orderflow-ingest deliver-service` on the stack's settings, expected to refuse."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "orderflow-ingest"), "deliver-service", "--config",
         str(stack.config_path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **env},
        timeout=120,
        check=False,
    )  # fmt: skip


@pytest.mark.stack
def test_deliver_timeout_above_the_pipe_time_limit_is_refused_at_service_start(
    stack: Any,
) -> None:
    base = Path(tempfile.mkdtemp(prefix="orderflow-refuse-", dir="/tmp"))
    try:
        sock = base / "deliver.sock"
        too_long = str(300 - CLIENT_GRACE + 1)  # pipe(8) would kill deliver first
        result = start_service(
            stack,
            {"ORDERFLOW_DELIVER_TIMEOUT": too_long, "ORDERFLOW_DELIVER_SOCKET": str(sock)},
        )
        assert result.returncode == 78, result.stderr[-2000:]
        assert "ORDERFLOW_DELIVER_TIMEOUT" in result.stderr
        assert "orderflow_time_limit" in result.stderr
        assert "Traceback" not in result.stderr
        assert not sock.exists()  # never listened
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.stack
def test_unlimited_message_size_is_refused_at_service_start(stack: Any, tmp_path: Path) -> None:
    """message_size_limit = 0 leaves the service's socket without a bound on the body."""
    config = postfix_copy(stack, tmp_path, {"message_size_limit": "0"})
    result = start_service(
        stack,
        {
            "ORDERFLOW_POSTFIX_CONFIG_DIR": str(config),
            "ORDERFLOW_DELIVER_SOCKET": str(tmp_path / "deliver.sock"),
        },
    )
    assert result.returncode == 78
    assert "message_size_limit" in result.stderr


@pytest.mark.stack
def test_doctor_reports_a_deliver_timeout_above_the_pipe_time_limit(
    stack: Any, tmp_path: Path
) -> None:
    ok = check_deliver_timeout(stack.settings)
    assert (ok.status, ok.name) == ("ok", "deliver timeout"), ok
    # The pipe's limit lowered below the (default 240 s) timeout, as an operator might.
    config = postfix_copy(stack, tmp_path, {"orderflow_time_limit": "200s"})
    lowered = check_deliver_timeout(stack_settings(stack, ORDERFLOW_POSTFIX_CONFIG_DIR=str(config)))
    assert lowered.status == "fail"
    assert "ORDERFLOW_DELIVER_TIMEOUT=240" in lowered.detail
    assert "orderflow_time_limit=200s" in lowered.detail
    # Through the CLI an operator runs.
    code, checks = cli_json(stack, "doctor", env={"ORDERFLOW_DELIVER_TIMEOUT": "299"})
    by_name = {check["name"]: check for check in checks}
    assert code == 1
    assert by_name["deliver timeout"]["status"] == "fail"
    assert "orderflow_time_limit=300s" in by_name["deliver timeout"]["detail"]


@pytest.mark.stack
def test_doctor_reports_an_unreadable_postfix_configuration(stack: Any, tmp_path: Path) -> None:
    missing = stack_settings(stack, ORDERFLOW_POSTFIX_CONFIG_DIR=str(tmp_path / "absent"))
    check = check_deliver_timeout(missing)
    assert check.status == "fail"
    assert "ORDERFLOW_POSTFIX_CONFIG_DIR" in check.detail
    assert os.fspath(tmp_path / "absent") in check.detail
