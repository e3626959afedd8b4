"""What docs/operations.md promises of the playbook and the defaults (issue 16), checked without
Ansible: hosts roll one at a time and drain first, ACME gives each MX its own certificate and
reloads Postfix on renewal, and the documented disk floor is the shipped one. The drain's wait
condition is evaluated on `postqueue -j` lines as Ansible would."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from orderflow_ingest.settings import SETTINGS

REPO = Path(__file__).resolve().parents[1]
ROLE = REPO / "ansible" / "roles" / "orderflow_ingest"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_the_playbook_rolls_one_host_at_a_time_and_drains_it_before_the_role() -> None:
    (play,) = _yaml(REPO / "ansible" / "playbook.yml")
    assert play["serial"] == 1
    assert play["max_fail_percentage"] == 0  # a failed host stops the roll-out
    (drain,) = play["pre_tasks"]  # pre_tasks run before the role's install and restarts
    include = drain["ansible.builtin.include_role"]
    assert include == {"name": "orderflow_ingest", "tasks_from": "drain.yml"}
    assert [role["role"] for role in play["roles"]] == ["orderflow_ingest"]


def _drain_tasks() -> list[dict[str, Any]]:
    tasks = _yaml(ROLE / "tasks" / "drain.yml")
    assert isinstance(tasks, list)
    return tasks


def test_the_drain_retries_the_deferred_queue_then_waits_within_the_timeout() -> None:
    argvs = [task["ansible.builtin.command"]["argv"] for task in _drain_tasks()]
    assert [argv[0] for argv in argvs] == ["postfix", "postqueue", "postqueue"]
    assert argvs[1][-1] == "-f" and argvs[2][-1] == "-j"
    wait = _drain_tasks()[2]
    assert wait["delay"] == 5
    assert "orderflow_ingest_drain_timeout" in wait["retries"]
    assert wait["failed_when"] is False  # best effort: a cut delivery answers 75 anyway
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    assert int(defaults["orderflow_ingest_drain_timeout"]) > 0


def _drained(lines: list[dict[str, Any]]) -> bool:
    """The wait task's `until`, rendered by Jinja2 with Ansible's from_json."""
    until = _drain_tasks()[2]["until"]
    env = jinja2.Environment()
    env.filters["from_json"] = json.loads
    stdout_lines = [json.dumps(line) for line in lines]
    text = env.from_string("{{ " + until + " }}").render(
        orderflow_ingest__drain_queue={"stdout_lines": stdout_lines}
    )
    return {"True": True, "False": False}[text.strip()]


def _entry(queue: str) -> dict[str, Any]:
    return {"queue_name": queue, "queue_id": "4Xq0", "recipients": [{"address": "a@b.test"}]}


@pytest.mark.parametrize(
    ("queues", "drained"),
    [
        ([], True),
        (["deferred", "hold"], True),  # retried later anyway: no reason to wait for them
        (["active"], False),
        (["deferred", "incoming"], False),
    ],
)
def test_the_drain_waits_while_postfix_delivers_or_takes_in(
    queues: list[str], drained: bool
) -> None:
    assert _drained([_entry(queue) for queue in queues]) is drained


def test_the_documented_disk_floor_is_the_shipped_default() -> None:
    (setting,) = [s for s in SETTINGS if s.name == "ORDERFLOW_MIN_FREE_MB"]
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    assert str(defaults["orderflow_ingest_min_free_mb"]) == setting.default
    guide = (REPO / "docs" / "operations.md").read_text()
    documented = re.search(r"`ORDERFLOW_MIN_FREE_MB` free \(default `(\d+)` MiB", guide)
    assert documented, "docs/operations.md does not give ORDERFLOW_MIN_FREE_MB's default"
    assert documented.group(1) == setting.default


def test_acme_gets_each_mx_its_own_certificate_and_reloads_postfix_on_renewal() -> None:
    main = _yaml(ROLE / "tasks" / "main.yml")
    (acme,) = [t for t in main if t.get("ansible.builtin.import_tasks") == "acme.yml"]
    assert acme["when"] == "orderflow_ingest_acme_email | length > 0"
    tasks = _yaml(ROLE / "tasks" / "acme.yml")
    assert tasks[0]["ansible.builtin.apt"]["name"] == "certbot"  # Debian's, with certbot.timer
    (hook,) = [t for t in tasks if "renewal-hooks/deploy/" in str(t)]
    assert hook["ansible.builtin.copy"]["mode"] == "0755"
    assert "postfix reload" in hook["ansible.builtin.copy"]["content"]
    (obtain,) = [t for t in tasks if "certonly" in str(t)]
    argv = obtain["ansible.builtin.command"]["argv"]
    name = "{{ orderflow_ingest_myhostname }}"
    assert argv[argv.index("--cert-name") + 1] == name and argv[argv.index("-d") + 1] == name
    # The example inventory points every host at the certificate of its own name.
    example = _yaml(REPO / "ansible" / "inventory.example.yml")["orderflow_mx"]["vars"]
    live = "/etc/letsencrypt/live/{{ orderflow_ingest_myhostname }}/"
    assert example["orderflow_ingest_tls_cert_file"] == live + "fullchain.pem"
    assert example["orderflow_ingest_tls_key_file"] == live + "privkey.pem"
