"""`queue` and `doctor` against the stack's real Postfix, sockets and backends."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import send_mail
from ops_support import CLI, cli, cli_json, env_with, wait_for
from samples import address, order_email

from orderflow_ingest.devstack.processes import wait_until
from orderflow_ingest.ops.doctor import unix_socket_listening

pytestmark = pytest.mark.stack


def test_queue_summarises_what_postfix_holds_during_an_outage(stack: Any) -> None:
    code, empty = cli_json(stack, "queue")
    assert code == 0
    assert set(empty["queues"]) >= {"active", "deferred", "hold", "incoming"}
    stack.stop_component("deliver")
    try:
        for _ in range(2):
            send_mail(stack, order_email(), [address("acme")])

        # Postfix retries deferred mail every few seconds here (the stack's short backoff), so
        # a message is sometimes in active for a moment: wait for a snapshot with both deferred.
        def both_deferred() -> dict[str, Any] | None:
            code, summary = cli_json(stack, "queue")
            assert code == 0
            return summary if summary["queues"]["deferred"]["messages"] >= 2 else None

        summary = wait_for(both_deferred, 30, "two deferred messages")
        deferred = summary["queues"]["deferred"]
        assert deferred["messages"] >= 2 and deferred["recipients"] >= 2
        assert deferred["size_bytes"] > 1000
        assert deferred["oldest_age_seconds"] > 0
        (top, *_rest) = summary["top_deferral_reasons"]
        assert "delivery service unavailable" in top["reason"]
        assert top["messages"] >= 2

        def text_with_reasons() -> str | None:
            text = cli(stack, "queue").stdout
            return text if "top deferral reasons" in text else None

        text = wait_for(text_with_reasons, 30, "the text report with deferral reasons")
        assert text.splitlines()[0].split() == ["queue", "messages", "recipients", "size", "oldest"]
        assert "top deferral reasons (messages):" in text
    finally:
        stack.start_component("deliver")
        stack.flush_queue()
        stack.wait_for_empty_queue(60)
    code, drained = cli_json(stack, "queue")
    assert drained["queues"]["deferred"]["messages"] == 0


def _checks(stack: Any, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]]]:
    code, checks = cli_json(stack, "doctor", env=env)
    return code, {check["name"]: check for check in checks}


def test_doctor_checks_the_stack(stack: Any) -> None:
    code, checks = _checks(stack)
    status = {name: check["status"] for name, check in checks.items()}
    for name in (
        "settings",
        "postgresql",
        "migrations",
        "redis",
        "s3",
        "transport",
        "deliver socket",
        "spool disk",
        "postfix queue disk",
    ):
        assert status[name] == "ok", checks[name]
    assert status["postfix check"] in ("ok", "warn")
    assert "orderflow.test -> orderflow:" in checks["transport"]["detail"]
    # The session stack runs no workers (a test may have one running for a moment).
    assert status["rq workers"] in ("warn", "ok")
    assert status["exporter"] in ("warn", "ok")
    # The session stack runs Postfix without the milter: doctor says so and fails.
    assert status["milter config"] == "fail"
    assert "not in smtpd_milters" in checks["milter config"]["detail"]
    assert status["milter socket"] == "fail"
    assert code == 1
    text = cli(stack, "doctor")
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert len(lines) == len(checks)
    assert lines[0].startswith("OK    settings")
    assert any(line.startswith("FAIL  milter socket") for line in lines)


def test_doctor_fails_when_the_pipe_client_is_not_built(stack: Any, tmp_path: Path) -> None:
    """Postfix would only say "temporary failure" for every message; doctor names the fix."""
    config_dir = tmp_path / "postfix"
    shutil.copytree(stack.postfix_config_dir, config_dir, ignore=shutil.ignore_patterns("*.pid"))
    master = config_dir / "master.cf"
    client = str(Path(CLI).parent / "orderflow-deliver")
    assert client in master.read_text()
    master.write_text(master.read_text().replace(client, str(tmp_path / "orderflow-deliver")))
    _code, checks = _checks(stack, {"ORDERFLOW_POSTFIX_CONFIG_DIR": str(config_dir)})
    assert checks["transport"]["status"] == "fail"
    assert "run orderflow-ingest build-deliver" in checks["transport"]["detail"]


def test_doctor_speaks_the_milter_protocol_to_a_running_milter(stack: Any) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="doctor-milter-", dir="/tmp"))
    sock = run_dir / "milter.sock"
    env = {"ORDERFLOW_MILTER_SOCKET": str(sock)}
    milter = subprocess.Popen(
        [CLI, "milter", "--config", str(stack.config_path)],
        env=env_with(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: unix_socket_listening(str(sock)), 30, 0.05), "milter not up"
        _code, checks = _checks(stack, env)
        assert checks["milter socket"]["status"] == "ok", checks["milter socket"]
        assert "milter protocol 6" in checks["milter socket"]["detail"]
    finally:
        milter.terminate()
        _out, err = milter.communicate(timeout=30)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert b"Traceback" not in err  # the handshake left no trace of trouble in its log


def test_doctor_reports_every_check_when_a_backend_is_down(stack: Any) -> None:
    code, checks = _checks(stack, {"ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert code == 1
    assert checks["redis"]["status"] == "fail"
    assert "unreachable" in checks["redis"]["detail"]
    assert checks["rq workers"]["status"] == "skip"
    assert checks["postgresql"]["status"] == "ok"  # the others are still checked
    assert checks["s3"]["status"] == "ok"


def test_doctor_with_broken_settings_fails_on_the_first_line(stack: Any) -> None:
    result = subprocess.run(
        [CLI, "doctor", "--config", "/nonexistent/ingest.env"],
        capture_output=True,
        text=True,
        env=env_with(),
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL  settings")
    assert "/nonexistent/ingest.env" in result.stdout
