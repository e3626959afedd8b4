"""The Ansible role keeps the rights the code relies on (items 11 and 12 of issue 10).

Read from the role's files, as tests/test_ansible_role.py does: no Ansible needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from orderflow_ingest.settings import MIGRATE_URL_SETTING, SETTINGS

REPO = Path(__file__).resolve().parents[1]
ROLE = REPO / "ansible" / "roles" / "orderflow_ingest"
VARIABLE = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


def _defaults() -> dict[str, str]:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def _render(text: str) -> str:
    """Substitute the role's plain defaults (one level of nesting resolved)."""
    defaults = _defaults()

    def value(match: re.Match[str]) -> str:
        return str(defaults.get(match.group(1), match.group(0)))

    return VARIABLE.sub(value, VARIABLE.sub(value, text))


def _service_section(unit: str) -> dict[str, list[str]]:
    """[Service] keys of a unit template (hardening include expanded), each with all values."""
    text = (ROLE / "templates" / unit).read_text()
    hardening = (ROLE / "templates" / "_hardening.j2").read_text()
    text = _render(text.replace("{% include '_hardening.j2' %}", hardening))
    section = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    keys: dict[str, list[str]] = {}
    for line in section.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def _spool_default() -> str:
    (spool,) = [s.default for s in SETTINGS if s.name == "ORDERFLOW_SPOOL_DIR"]
    assert spool is not None
    return spool


def test_item12_worker_units_can_write_their_spool() -> None:
    """ProtectSystem=strict makes the file system read-only: the workers decode attachments
    into the spool, so their unit must name it (else they fall back to a tmpfs /tmp)."""
    defaults = _defaults()
    assert defaults["orderflow_ingest_spool_dir"] == _spool_default()
    vars_text = (ROLE / "vars" / "main.yml").read_text()
    assert "'ORDERFLOW_SPOOL_DIR': orderflow_ingest_spool_dir" in vars_text
    for unit in ("orderflow-ingest-worker@.service.j2", "orderflow-ingest-deliver.service.j2"):
        service = _service_section(unit)
        assert service["ProtectSystem"] == ["strict"], unit
        writable = " ".join(service.get("ReadWritePaths", [])).split()
        assert defaults["orderflow_ingest_spool_dir"] in writable, unit
        assert service["User"] == [defaults["orderflow_ingest_user"]], unit


def test_item11_owner_url_is_not_in_the_services_settings_file() -> None:
    vars_text = (ROLE / "vars" / "main.yml").read_text()
    settings_block = vars_text.split("orderflow_ingest__settings:", 1)[1].split("\n\n", 1)[0]
    assert MIGRATE_URL_SETTING not in settings_block
    assert "orderflow_ingest_migrate_database_url" not in settings_block
    assert (
        "orderflow_ingest_migrate_database_url"
        not in (ROLE / "templates" / "ingest.env.j2").read_text()
    )


def test_item11_owner_url_goes_to_a_root_only_file_read_by_migrate() -> None:
    tasks = yaml.safe_load((ROLE / "tasks" / "settings.yml").read_text())
    (task,) = [
        t for t in tasks if t.get("ansible.builtin.template", {}).get("src") == "migrate.env.j2"
    ]
    template = task["ansible.builtin.template"]
    assert template["dest"] == "{{ orderflow_ingest_migrate_config_file }}"
    assert (template["owner"], template["group"], template["mode"]) == ("root", "root", "0600")
    assert task["no_log"]
    rendered = (ROLE / "templates" / "migrate.env.j2").read_text()
    assert f"{MIGRATE_URL_SETTING}={{{{ orderflow_ingest_migrate_database_url }}}}" in rendered
    (migrate,) = yaml.safe_load((ROLE / "tasks" / "migrate.yml").read_text())
    argv = migrate["ansible.builtin.command"]["argv"]
    assert argv[argv.index("--migrate-config") + 1] == "{{ orderflow_ingest_migrate_config_file }}"
    assert _defaults()["orderflow_ingest_migrate_config_file"].endswith("/migrate.env")
