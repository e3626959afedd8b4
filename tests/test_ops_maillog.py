"""Where `show` reads Postfix's log on Debian 12, which has no /var/log/mail.log without rsyslog
(issue 16, "Logs"): Postfix's own maillog_file when main.cf sets one (the role does), its first
rotation (logrotate's delaycompress keeps it plain text), else mail.log."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from orderflow_ingest.ops import trace

REPO = Path(__file__).resolve().parents[1]
ROLE = REPO / "ansible" / "roles" / "orderflow_ingest"
SAMPLE = Path(__file__).parent / "data" / "maillog-sample.log"
QUEUE_ID = "E290520C1FB"
MESSAGE_ID = "<20261121054939.E290520C1FB@cap.test>"


def test_show_reads_postfix_s_own_log_file_when_main_cf_names_one(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("maillog_file = /var/log/postfix.log\n")
    assert trace.maillog_path(str(tmp_path)) == "/var/log/postfix.log"


def test_without_maillog_file_show_falls_back_to_syslog_s_mail_log(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("myhostname = mx.example.test\n")
    assert trace.maillog_path(str(tmp_path)) == trace.DEBIAN_MAILLOG
    assert trace.maillog_path(str(tmp_path / "missing")) == trace.DEBIAN_MAILLOG


def test_a_queue_id_logged_before_the_rotation_is_found_in_the_first_rotation(
    tmp_path: Path,
) -> None:
    log = tmp_path / "postfix.log"
    (tmp_path / "postfix.log.1").write_bytes(SAMPLE.read_bytes())  # yesterday's, rotated
    log.write_text("Nov 22 00:00:01 mx postfix/master[1]: reload -- version 3.7.11\n")
    story = trace.maillog_lines(str(log), {QUEUE_ID})
    assert story["path"] == str(log) and "error" not in story
    assert len(story["lines"]) == 5 and all(f" {QUEUE_ID}: " in line for line in story["lines"])
    assert trace.queue_ids_for_message_id(str(log), MESSAGE_ID) == {QUEUE_ID}
    # A rotation older than the message cannot hold its lines: not read at all.
    hour_ago = time.time() - 3600
    os.utime(tmp_path / "postfix.log.1", (hour_ago, hour_ago))
    assert trace.maillog_lines(str(log), {QUEUE_ID}, since=datetime.now(UTC))["lines"] == []


def test_the_role_gives_postfix_its_own_log_file_rotated_as_show_reads_it() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["orderflow_ingest_postfix_maillog_file"] == "/var/log/postfix.log"
    overrides = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert (
        "'maillog_file': orderflow_ingest_postfix_maillog_file"
        in (overrides["orderflow_ingest__main_cf_overrides"])
    )
    rotate = (ROLE / "templates" / "postfix-logrotate.j2").read_text()
    assert "delaycompress" in rotate  # the first rotation (.1) stays plain text for `show`
