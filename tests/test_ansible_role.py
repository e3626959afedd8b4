"""The Ansible role (issue 6), statically: lint-clean, parses, documents every variable, and
feeds every placeholder of postfix-config/ (the fragments the devstack renders too).

The linters live in their own virtualenv (`make ansible-test` makes .venv-ansible from
ansible/requirements-dev.txt): ansible-core and ansible-lint pin their own Jinja2, PyYAML and
friends, which must not steer the project's dependencies. Without that venv these tests skip,
unless TEST_ANSIBLE_APPLY=1 says this run is the one that must check the role.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
ROLE = ANSIBLE_DIR / "roles" / "orderflow_ingest"
TOOLS_BIN = Path(os.environ.get("ANSIBLE_TOOLS_BIN", REPO / ".venv-ansible" / "bin"))
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


def tool(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.is_file():
        message = f"{path} missing: run `make ansible-test` (installs ansible/requirements-dev.txt)"
        if os.environ.get("TEST_ANSIBLE_APPLY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env["PATH"] = f"{TOOLS_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["NO_COLOR"] = "1"
    return env


def run_tool(argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ANSIBLE_DIR,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_yamllint_is_clean() -> None:
    result = run_tool([str(tool("yamllint")), "--strict", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile_is_clean() -> None:
    result = run_tool([str(tool("ansible-lint")), "--offline", "--nocolor"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_playbook_syntax_check() -> None:
    result = run_tool(
        [
            str(tool("ansible-playbook")),
            "-i",
            "inventory.example.yml",
            "--syntax-check",
            "playbook.yml",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _defaults() -> list[str]:
    text = (ROLE / "defaults" / "main.yml").read_text()
    return re.findall(r"^(orderflow_ingest_[a-z0-9_]+):", text, re.MULTILINE)


def test_every_default_is_documented_in_the_role_readme() -> None:
    readme = (ROLE / "README.md").read_text()
    defaults = _defaults()
    assert len(defaults) > 30
    missing = [name for name in defaults if f"`{name}`" not in readme]
    assert not missing, f"variables without a line in {ROLE / 'README.md'}: {missing}"


def test_readme_documents_no_variable_that_does_not_exist() -> None:
    readme = (ROLE / "README.md").read_text()
    documented = set(re.findall(r"^\| `(orderflow_ingest_[a-z0-9_]+)`", readme, re.MULTILINE))
    assert documented == set(_defaults())


def test_role_fills_every_placeholder_of_the_postfix_fragments() -> None:
    """A placeholder added to postfix-config/ without a value in the role fails here, long
    before an apply (Ansible would stop on the undefined variable)."""
    vars_text = (ROLE / "vars" / "main.yml").read_text()
    block = vars_text.split("orderflow_ingest__postfix_vars:", 1)[1].split("\n\n", 1)[0]
    role_names = set(re.findall(r"^  ([a-z_]+):", block, re.MULTILINE))
    for name in (
        "main.cf",
        "master.cf",
        "orderflow_custom_domains.cf",
        "orderflow_custom_role_mailboxes.cf",
    ):
        used = set(PLACEHOLDER.findall((REPO / "postfix-config" / name).read_text()))
        assert used <= role_names, f"postfix-config/{name}: no role value for {used - role_names}"
    transport_map = (REPO / "postfix-config" / "orderflow_transport").read_text()
    transport = set(PLACEHOLDER.findall(transport_map))
    assert transport == {"ingest_domain"}, "the role's transport template renders per domain"


def test_units_run_our_commands_as_the_service_user() -> None:
    for unit in ROLE.glob("templates/orderflow-ingest-*.service.j2"):
        text = unit.read_text()
        assert "User={{ orderflow_ingest_user }}" in text, unit.name
        assert "{% include '_hardening.j2' %}" in text, unit.name
        assert re.search(r"^ExecStart=\{\{ orderflow_ingest__command \}\} \S+", text, re.M)
        if "Type=oneshot" not in text:
            assert "Restart=always" in text, unit.name
