"""A real apply of the Ansible role to this machine (issue 6): connection local, as root,
Debian 12, with `orderflow_ingest_service_manager: none` because systemd is not PID 1 here.

Opt-in (TEST_ANSIBLE_APPLY=1; `make ansible-test` sets it): the apply changes the machine the
way it changes an operator's host — the default Postfix instance in /etc/postfix, the user
`orderflow`, /opt/orderflow-ingest, /etc/orderflow. The backends are a devstack's PostgreSQL,
Redis and S3, handed to the role as variables as an operator would. The test then starts each
service exactly as its rendered unit says (ExecStart, User, Group, SupplementaryGroups, UMask,
Environment, RuntimeDirectory, ExecStartPre=+, NoNewPrivileges), starts Postfix the way
Debian's postfix@- unit does, sends a message through it and waits for it to be STORED, and
applies the role a second time expecting zero changed tasks (with `doctor` as the final check).

Left as it found it: main.cf and master.cf are restored, the services and Postfix it started
are stopped, the /run directories removed. The role's other artefacts stay (user, venv, units,
settings file): harmless without systemd, and a real host keeps them too.

The role is applied from a snapshot of the working tree, so the wheel built in the first and
the second run is the same even while someone edits the checkout.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.rows import dict_row

from orderflow_ingest.devstack.postfix import without_custom_role_mailboxes
from orderflow_ingest.devstack.processes import free_ports, port_is_free
from orderflow_ingest.devstack.templates import render_file

pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    # The first test pays for the stack, a first apply (a whole virtualenv from PyPI) and the
    # start of every service: ~1 min here, several on a loaded machine.
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("TEST_ANSIBLE_APPLY") != "1",
        reason="changes this machine's Postfix, users and /opt: set TEST_ANSIBLE_APPLY=1"
        " (make ansible-test)",
    ),
]

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = Path(os.environ.get("ANSIBLE_TOOLS_BIN", REPO / ".venv-ansible" / "bin"))
POSTFIX_DIR = Path("/etc/postfix")
UNIT_DIR = Path("/etc/systemd/system")
VENV = Path("/opt/orderflow-ingest/venv")
CONFIG = Path("/etc/orderflow/ingest.env")
SPOOL = Path("/var/spool/orderflow")
MAILLOG = Path("/var/log/orderflow-ansible-test.maillog")
DOMAIN = "orderflow.test"
RUNTIME_DIRS = (Path("/run/orderflow"), Path("/run/orderflow-milter"))
# The long-running units, as systemd would start them on this host (worker instance 1).
SERVICES = (
    ("orderflow-ingest-deliver.service", None),
    ("orderflow-ingest-milter.service", None),
    ("orderflow-ingest-worker@.service", "1"),
    ("orderflow-ingest-exporter.service", None),
)
# Every unit the role renders, as its vars list them (one list: a new unit is checked too).
UNIT_FILES = tuple(
    yaml.safe_load((REPO / "ansible/roles/orderflow_ingest/vars/main.yml").read_text())[
        "orderflow_ingest__unit_files"
    ]
)
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv*",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".devstack",
    "__pycache__",
    "build",
    "dist",
    "*.egg-info",
)


# --- running the playbook ----------------------------------------------------------------


@dataclass
class PlayResult:
    returncode: int
    output: str
    seconds: float
    recap: dict[str, int] = field(default_factory=dict)
    changed_tasks: list[str] = field(default_factory=list)


def parse_play(output: str) -> tuple[dict[str, int], list[str]]:
    recap: dict[str, int] = {}
    match = re.search(r"^localhost\s+:\s+(.*)$", output, re.MULTILINE)
    if match:
        recap = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}
    changed: list[str] = []
    task = ""
    for line in output.splitlines():
        header = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line)
        if header:
            task = header.group(1)
        elif line.startswith("changed:") and task not in changed:
            changed.append(task)
    return recap, changed


def run_playbook(ansible_dir: Path, inventory: Path, extra_vars: Path, *more: str) -> PlayResult:
    playbook = TOOLS_BIN / "ansible-playbook"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env.update(
        PATH=f"{TOOLS_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CONFIG=str(ansible_dir / "ansible.cfg"),
    )
    started = time.monotonic()
    result = subprocess.run(
        [str(playbook), "-i", str(inventory), "-e", f"@{extra_vars}", *more, "playbook.yml"],
        cwd=ansible_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    recap, changed = parse_play(output)
    return PlayResult(
        result.returncode, output, round(time.monotonic() - started, 1), recap, changed
    )


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- starting services the way their units say --------------------------------------------


def read_unit(path: Path, instance: str | None = None) -> dict[str, list[str]]:
    """[Service] directives of a unit file, specifiers %i and %t expanded."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "Service":
            continue
        key, _, value = line.partition("=")
        value = value.replace("%t", "/run")
        if instance is not None:
            value = value.replace("%i", instance)
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def credentials(unit: dict[str, list[str]]) -> list[str]:
    """setpriv arguments for the unit's User, Group, SupplementaryGroups and NoNewPrivileges."""
    groups = " ".join(unit.get("SupplementaryGroups", [])).split()
    argv = [
        "setpriv",
        f"--reuid={unit['User'][0]}",
        f"--regid={unit['Group'][0]}",
        f"--groups={','.join(groups)}" if groups else "--clear-groups",
    ]
    if unit.get("NoNewPrivileges", ["no"])[-1] == "yes":
        argv.append("--no-new-privs")
    return [*argv, "--"]


def unit_env(unit: dict[str, list[str]]) -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for entry in unit.get("Environment", []):
        for item in shlex.split(entry):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def prepare_runtime_directory(unit: dict[str, list[str]]) -> None:
    """What systemd does before ExecStartPre: a fresh /run/<dir>, the unit's owner and mode."""
    for name in unit.get("RuntimeDirectory", []):
        path = Path("/run") / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.chown(path, pwd.getpwnam(unit["User"][0]).pw_uid, grp.getgrnam(unit["Group"][0]).gr_gid)
        os.chmod(path, int(unit.get("RuntimeDirectoryMode", ["0755"])[0], 8))


def start_unit(name: str, instance: str | None, logs: Path) -> subprocess.Popen[bytes]:
    unit = read_unit(UNIT_DIR / name, instance)
    prepare_runtime_directory(unit)
    for pre in unit.get("ExecStartPre", []):
        assert pre.startswith("+"), f"{name}: only privileged ExecStartPre= are mimicked here"
        subprocess.run(shlex.split(pre[1:]), check=True)
    (exec_start,) = unit["ExecStart"]
    log = (logs / f"{name.replace('@', '-')}.log").open("ab")
    with log:
        return subprocess.Popen(
            [*credentials(unit), *shlex.split(exec_start)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=unit_env(unit),
            cwd="/",
            umask=int(unit.get("UMask", ["0022"])[0], 8),
            start_new_session=True,
        )


def run_oneshot(name: str) -> subprocess.CompletedProcess[str]:
    unit = read_unit(UNIT_DIR / name)
    (exec_start,) = unit["ExecStart"]
    return subprocess.run(
        [*credentials(unit), *shlex.split(exec_start)],
        env=unit_env(unit),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        umask=int(unit.get("UMask", ["0022"])[0], 8),
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, explain: Callable[[], str] = str
) -> Any:
    """Poll until check() is truthy; on timeout say what, plus explain() (logs, read late)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{explain()}")
        time.sleep(0.1)


def listening(path: Path) -> bool:
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
            return True
    return False


def banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.settimeout(2)
            return conn.recv(64).startswith(b"220")
    except OSError:
        return False


def postfix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/usr/sbin/postfix", "-c", str(POSTFIX_DIR), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def postconf(*args: str) -> str:
    return subprocess.run(
        ["/usr/sbin/postconf", "-c", str(POSTFIX_DIR), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


# --- the applied host --------------------------------------------------------------------


@dataclass
class Host:
    work: Path
    ansible_dir: Path
    inventory: Path
    vars_file: Path
    variables: dict[str, Any]
    smtp_port: int
    metrics_port: int
    database_url: str
    first: PlayResult
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def apply(self, **overrides: Any) -> PlayResult:
        path = self.work / "vars-again.json"
        path.write_text(json.dumps({**self.variables, **overrides}))
        path.chmod(0o600)
        return run_playbook(self.ansible_dir, self.inventory, path)

    def logs_tail(self) -> str:
        parts = []
        for log in [*sorted(self.logs.glob("*.log")), MAILLOG]:
            if log.is_file():
                parts.append(f"--- {log.name}\n{tail(log.read_text(errors='replace'), 15)}")
        return "\n".join(parts)


def require_machine() -> None:
    if os.geteuid() != 0:
        pytest.fail("the apply test needs root (it provisions this machine)")
    if "bookworm" not in Path("/etc/os-release").read_text():
        pytest.fail("the role targets Debian 12 (bookworm)")
    for needed in (TOOLS_BIN / "ansible-playbook", Path("/usr/bin/systemd-analyze")):
        if not needed.exists():
            pytest.fail(f"{needed} missing (make ansible-test; apt-get install systemd)")


@pytest.fixture(scope="module")
def host(make_stack: Callable[..., Any]) -> Iterator[Host]:
    require_machine()
    stack = make_stack(deliver=False)
    with contextlib.suppress(Exception):
        stack.stop_component("postfix")  # the devstack's own instance is not needed here
    settings = stack.settings
    work = Path(tempfile.mkdtemp(prefix="orderflow-ansible-", dir="/tmp"))
    logs = work / "logs"
    logs.mkdir()
    source = work / "src"
    shutil.copytree(REPO, source, ignore=SNAPSHOT_IGNORE, symlinks=True)
    # Debian's "No configuration" install (scripts/install-system-deps) has no main.cf at all.
    saved = {
        name: (POSTFIX_DIR / name).read_bytes() if (POSTFIX_DIR / name).exists() else None
        for name in ("main.cf", "master.cf")
    }
    transport_existed = (POSTFIX_DIR / "orderflow_transport").exists()
    postfix_was_running = postfix("status").returncode == 0
    smtp_port = 2525 if port_is_free(2525) else free_ports(1)[0]
    metrics_port = free_ports(1)[0]
    variables: dict[str, Any] = {
        "orderflow_ingest_service_manager": "none",
        "orderflow_ingest_domains": [DOMAIN],
        "orderflow_ingest_database_url": settings.database_url,
        "orderflow_ingest_migrate_database_url": settings.migrate_url,
        "orderflow_ingest_redis_url": settings.redis_url,
        "orderflow_ingest_s3_endpoint_url": settings.s3_endpoint_url,
        "orderflow_ingest_s3_bucket": settings.s3_bucket,
        "orderflow_ingest_s3_access_key": settings.s3_access_key,
        "orderflow_ingest_s3_secret_key": settings.s3_secret_key,
        "orderflow_ingest_smtpd_listen": f"127.0.0.1:{smtp_port}",
        "orderflow_ingest_metrics_listen": f"127.0.0.1:{metrics_port}",
        "orderflow_ingest_myhostname": f"mx.{DOMAIN}",
        "orderflow_ingest_postmaster_address": "postmaster@ops.invalid",
        "orderflow_ingest_workers": 1,
        # Nothing to resolve here: keep the milter's SPF/DKIM look-ups short.
        "orderflow_ingest_settings": {"ORDERFLOW_DNS_TIMEOUT": "2"},
        # No syslog on this machine; Debian's master.cf has the postlog service.
        "orderflow_ingest_postfix_main_cf_extra": {"maillog_file": str(MAILLOG)},
        "orderflow_ingest_doctor": False,
    }
    vars_file = work / "vars.json"
    vars_file.write_text(json.dumps(variables))
    vars_file.chmod(0o600)
    inventory = work / "inventory.yml"
    inventory.write_text(
        "orderflow_mx:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: /usr/bin/python3\n"
    )
    ansible_dir = source / "ansible"
    first = run_playbook(ansible_dir, inventory, vars_file)
    the_host = Host(
        work,
        ansible_dir,
        inventory,
        vars_file,
        variables,
        smtp_port,
        metrics_port,
        settings.migrate_url,
        first,
        logs,
    )
    postfix_started = False
    try:
        assert first.returncode == 0, f"first apply failed:\n{tail(first.output, 80)}"
        for name, instance in SERVICES:
            the_host.processes[name] = start_unit(name, instance, logs)
        # Debian's postfix@-.service: ExecStartPre=configure-instance.sh, ExecStart=postmulti.
        if not postfix_was_running:
            subprocess.run(["/usr/lib/postfix/configure-instance.sh", "-"], check=True)
            subprocess.run(["/usr/sbin/postmulti", "-i", "-", "-p", "start"], check=True)
            postfix_started = True
        wait_for(lambda: banner(smtp_port), 90, f"Postfix on 127.0.0.1:{smtp_port}")
        for path in (RUNTIME_DIRS[0] / "deliver.sock", RUNTIME_DIRS[1] / "milter.sock"):
            wait_for(partial(listening, path), 90, f"{path} listening", the_host.logs_tail)
        yield the_host
    finally:
        for process in the_host.processes.values():
            stop(process)
        if postfix_started:
            subprocess.run(["/usr/sbin/postmulti", "-i", "-", "-p", "stop"], check=False)
        for name, content in saved.items():
            if content is None:
                (POSTFIX_DIR / name).unlink(missing_ok=True)
            else:
                (POSTFIX_DIR / name).write_bytes(content)
        if not transport_existed:
            (POSTFIX_DIR / "orderflow_transport").unlink(missing_ok=True)
        if postfix_was_running:
            postfix("reload")
        for path in RUNTIME_DIRS:
            shutil.rmtree(path, ignore_errors=True)
        MAILLOG.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


# --- the tests ---------------------------------------------------------------------------


def mode_owner(path: Path) -> tuple[str, str, str]:
    info = path.stat()
    return (
        oct(stat.S_IMODE(info.st_mode)),
        pwd.getpwuid(info.st_uid).pw_name,
        grp.getgrgid(info.st_gid).gr_name,
    )


def test_first_apply_succeeds_within_budget(host: Host) -> None:
    print(f"first apply: {host.first.seconds}s, recap {host.first.recap}")
    assert host.first.recap.get("failed") == 0


def test_files_have_the_modes_and_owners_the_services_need(host: Host) -> None:
    assert mode_owner(CONFIG.parent) == ("0o750", "root", "orderflow")
    assert mode_owner(CONFIG) == ("0o640", "root", "orderflow")
    assert mode_owner(SPOOL) == ("0o700", "orderflow", "orderflow")
    assert mode_owner(POSTFIX_DIR / "orderflow_transport") == ("0o644", "root", "root")
    for name in UNIT_FILES:
        assert mode_owner(UNIT_DIR / name) == ("0o644", "root", "root"), name
    # The runtime directories as the units made them; the milter's socket reaches Postfix only.
    assert mode_owner(Path("/run/orderflow")) == ("0o750", "orderflow", "orderflow")
    assert mode_owner(Path("/run/orderflow-milter")) == ("0o2750", "orderflow", "postfix")
    milter_socket = Path("/run/orderflow-milter/milter.sock")
    assert mode_owner(milter_socket) == ("0o660", "orderflow", "postfix")
    assert mode_owner(Path("/run/orderflow/deliver.sock"))[1:] == ("orderflow", "orderflow")
    user = pwd.getpwnam("orderflow")
    assert (user.pw_dir, user.pw_shell) == ("/nonexistent", "/usr/sbin/nologin")
    assert "postfix" not in grp.getgrnam("orderflow").gr_mem


def test_virtualenv_is_world_readable_and_byte_compiled(host: Host) -> None:
    """pipe(8) runs `deliver` as an unprivileged user with no home: nothing may be private,
    and nothing may need compiling on the way."""
    private = []
    for root, dirs, files in os.walk(VENV):
        for name in dirs + files:
            path = Path(root, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            needed = 0o005 if stat.S_ISDIR(mode) else 0o004
            if mode & needed != needed:
                private.append(str(path))
    assert not private[:5]
    package = next(VENV.glob("lib/python3*/site-packages/orderflow_ingest"))
    missing = [
        str(source)
        for source in package.rglob("*.py")
        if not list(source.parent.glob(f"__pycache__/{source.stem}.cpython-3*.pyc"))
    ]
    assert not missing
    # The deliver client runs as the pipe user and reads the settings file.
    result = subprocess.run(
        ["setpriv", "--reuid=orderflow", "--regid=orderflow", "--clear-groups", "--",
         str(VENV / "bin" / "python"), "-c",
         f"from orderflow_ingest.settings import load_settings; load_settings('{CONFIG}')"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def deliver_client() -> str:
    """The compiled pipe client in the provisioned virtualenv (what pipe(8) runs)."""
    client = VENV / "bin" / "orderflow-deliver"
    assert mode_owner(client) == ("0o755", "root", "root")
    return str(client)


def master_entries(text: str) -> list[list[str]]:
    """master.cf entries as field lists, continuation lines joined."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[:1] in (" ", "\t"):
            entries[-1].extend(line.split())
        else:
            entries.append(line.split())
    return entries


def test_postfix_has_exactly_the_settings_of_postfix_config(host: Host) -> None:
    """The role and the devstack render the same fragments: render them here with the
    devstack's own renderer and the role's values, and compare with the live configuration."""
    variables: dict[str, str | list[str]] = {
        "ingest_domains": DOMAIN,
        "ingest_domain": [DOMAIN],
        "config_directory": str(POSTFIX_DIR),
        "milter_socket": "/run/orderflow-milter/milter.sock",
        "tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
        "tls_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
        "smtpd_listen": f"127.0.0.1:{host.smtp_port}",
        "pipe_concurrency": "8",
        "pipe_user": "orderflow",
        "deliver_command": deliver_client(),
        "config_file": str(CONFIG),
        "postmaster_address": "postmaster@ops.invalid",
    }
    live = {}
    for line in postconf("-n").splitlines():
        name, _, value = line.partition("=")
        live[name.strip()] = value.strip()
    wanted = {}
    for line in render_file("main.cf", variables).splitlines():
        match = re.match(r"^([a-z0-9_]+)\s*=\s*(.*)$", line)
        if match:
            wanted[match.group(1)] = match.group(2).strip()
    assert wanted
    # This apply sets no orderflow_ingest_postfix_pgsql_hosts, so the role leaves custom
    # domains off and relay_domains is the ingest domains alone (vars/main.yml's override),
    # and virtual_alias_maps has no pipemap to their role mailboxes.
    wanted["relay_domains"] = DOMAIN
    wanted["virtual_alias_maps"] = without_custom_role_mailboxes(render_file("main.cf", variables))
    differing = {k: (v, live.get(k)) for k, v in wanted.items() if live.get(k) != v}
    assert not differing, f"main.cf differs from postfix-config/main.cf: {differing}"
    assert live["myhostname"] == f"mx.{DOMAIN}"
    services = {"/".join(line.split()[:2]): line.split() for line in postconf("-M").splitlines()}
    for entry in master_entries(render_file("master.cf", variables)):
        key = "/".join(entry[:2])
        assert services.get(key) == entry, f"master.cf {key}: {services.get(key)} != {entry}"
    assert "smtp/inet" not in services, "the distribution's smtpd on port 25 gave way"
    transport = (POSTFIX_DIR / "orderflow_transport").read_text()
    assert f"{DOMAIN}    orderflow:" in transport
    role_mailboxes = (POSTFIX_DIR / "role_mailboxes").read_text()
    assert f"postmaster@{DOMAIN}    postmaster@ops.invalid" in role_mailboxes
    assert postfix("check").returncode == 0


def test_units_pass_systemd_analyze_verify(host: Host) -> None:
    verify_dir = host.work / "verify"
    verify_dir.mkdir(exist_ok=True)
    paths = []
    for name in UNIT_FILES:
        target = UNIT_DIR / name
        if name.endswith("@.service"):
            link = verify_dir / name.replace("@.", "@1.")
            if not link.exists():
                link.symlink_to(target)
            paths.append(str(link))
        else:
            paths.append(str(target))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def order_message(message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Buyer <buyer@customer.example>"
    message["To"] = f"orders+acme@{DOMAIN}"
    message["Subject"] = "PO 4711 (Ansible-provisioned MX)"
    message["Message-ID"] = message_id
    message["Date"] = "Sat, 21 Nov 2026 06:00:00 +0000"
    message.set_content("Please find our order attached.")
    message.add_attachment(
        b"%PDF-1.4\n% order 4711\n", maintype="application", subtype="pdf", filename="po-4711.pdf"
    )
    return message


def test_message_through_the_provisioned_postfix_is_stored(host: Host) -> None:
    message_id = f"<{uuid.uuid4().hex}@customer.example>"
    with smtplib.SMTP("127.0.0.1", host.smtp_port, local_hostname="mail.customer.example") as smtp:
        refused = smtp.send_message(order_message(message_id), "buyer@customer.example")
    assert not refused

    def row() -> dict[str, Any] | None:
        with psycopg.connect(host.database_url, row_factory=dict_row) as conn:
            return conn.execute(
                "SELECT m.status, m.postfix_queue_id, m.auth_results, o.slug::text AS slug,"
                " (SELECT count(*) FROM document d WHERE d.inbound_message_id = m.id) AS docs"
                " FROM inbound_message m JOIN org o ON o.id = m.org_id"
                " WHERE m.source_message_id = %s",
                (message_id,),
            ).fetchone()

    stored = wait_for(
        lambda: (r := row()) and r["status"] in ("STORED", "PARSED") and r,
        60,
        "the message STORED",
        host.logs_tail,
    )
    assert stored["slug"] == "acme"
    assert stored["postfix_queue_id"], "deliver got the queue id from pipe(8)"
    assert stored["auth_results"], "the milter's Authentication-Results reached the row"
    parsed = wait_for(
        lambda: (r := row()) and r["status"] == "PARSED" and r,
        60,
        "the worker to parse it",
        host.logs_tail,
    )
    assert parsed["docs"] == 1


def test_unknown_org_is_refused_at_rcpt_by_the_milter(host: Host) -> None:
    with smtplib.SMTP("127.0.0.1", host.smtp_port, local_hostname="mail.customer.example") as smtp:
        smtp.ehlo()
        smtp.mail("buyer@customer.example")
        code, _ = smtp.rcpt(f"orders+no-such-org@{DOMAIN}")
        assert code == 550
        code, _ = smtp.rcpt("someone@elsewhere.example")
        assert code == 554, "no open relay"


def test_exporter_and_sweep_read_postfix_queue_with_their_unit_credentials(host: Host) -> None:
    """SupplementaryGroups=postdrop is what lets postqueue work under NoNewPrivileges."""
    unit = read_unit(UNIT_DIR / "orderflow-ingest-exporter.service")
    queue = subprocess.run(
        [*credentials(unit), "/usr/sbin/postqueue", "-c", str(POSTFIX_DIR), "-j"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert queue.returncode == 0, queue.stderr
    url = f"http://127.0.0.1:{host.metrics_port}/metrics"
    body = wait_for(lambda: _get(url), 90, f"the exporter at {url}", host.logs_tail)
    assert "orderflow_" in body
    sweep = run_oneshot("orderflow-ingest-sweep.service")
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_second_apply_changes_nothing_and_doctor_passes(host: Host) -> None:
    again = host.apply(orderflow_ingest_doctor=True)
    print(f"second apply: {again.seconds}s, recap {again.recap}")
    assert again.returncode == 0, f"second apply failed:\n{tail(again.output, 80)}"
    assert again.recap.get("changed") == 0, f"changed on re-run: {again.changed_tasks}"
    assert "orderflow-ingest doctor" in again.output
