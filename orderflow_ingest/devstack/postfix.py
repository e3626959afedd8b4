"""A separate Postfix instance on a loopback port, configured from postfix-config/.

main.cf and master.cf are the production fragments from postfix-config/ rendered with this
stack's paths, plus a dev overlay (own queue and data directories, a log file instead of
syslog, loopback only, short retry times, nothing ever sent out). So what the tests exercise is
what ships. Facts this module depends on (Postfix 3.7):

- `postfix -c DIR` needs an absolute DIR; with a relative one it fails without a word.
- `maillog_file` must start with one of `maillog_file_prefixes` (default /var, /dev/stdout),
  else the instance dies before it can log why; the `postlog` service must be in master.cf.
- Every service runs with chroot n, so paths (milter socket, TLS files) are the same for all.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from orderflow_ingest.devstack import accounts
from orderflow_ingest.devstack.component import Component
from orderflow_ingest.devstack.processes import ProcessRef, in_netns, listens_on, wait_until
from orderflow_ingest.devstack.templates import merge_main_cf, render_file
from orderflow_ingest.pipe.build import ensure_built

POSTFIX = "/usr/sbin/postfix"
# Where postmaster@ and abuse@ go on the devstack: the discard transport logs the hand-off.
DEV_POSTMASTER_ADDRESS = "postmaster@ops.invalid"
POSTQUEUE = "/usr/sbin/postqueue"
START_TIMEOUT = 30
# proxy:pgsql: tables of the custom domains (postfix-config/, issue 13).
CUSTOM_DOMAIN_MAPS = ("orderflow_custom_domains.cf", "orderflow_custom_role_mailboxes.cf")
# Takes the domain of a postmaster@/abuse@ address, the key of the second one.
ROLE_MAILBOX_DOMAIN = "orderflow_role_mailbox_domain.regexp"
# The pipemap of main.cf's virtual_alias_maps that asks them for postmaster@/abuse@.
CUSTOM_ROLE_MAILBOXES = re.compile(r"\s*pipemap:\{[^}]*orderflow_custom_role_mailboxes\.cf\s*\}")

# The services a standalone instance needs besides ours (upstream defaults, chroot n).
# No local delivery. pickup stays: `postqueue -f` checks it to see whether Postfix is up.
BASE_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(Component):
    name = "postfix"
    stop_timeout = 20.0

    @property
    def home(self) -> Path:
        return self.ctx.layout.base / "postfix"

    @property
    def config_dir(self) -> Path:
        return self.home / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.home / "queue"

    def smtp_port(self) -> int:
        return self.ctx.port("postfix.smtp")

    def _tls_files(self) -> tuple[Path, Path] | None:
        """A self-signed certificate for the instance, made once (openssl is in Debian's base)."""
        tls = accounts.make_dir(self.home / "tls", 0o700)
        cert, key = tls / "cert.pem", tls / "key.pem"
        if cert.is_file() and key.is_file():
            return cert, key
        openssl = shutil.which("openssl")
        if openssl is None:
            return None
        result = subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "365",
                "-subj",
                f"/CN=mx.{self.ctx.options.ingest_domain}",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise self.fail(f"openssl could not make a test certificate: {result.stderr.strip()}")
        key.chmod(0o600)
        return cert, key

    def render(self) -> None:
        """Write main.cf, master.cf and the transport map of this instance."""
        options = self.ctx.options
        layout = self.ctx.layout
        port = self.ctx.ports(self.name, ("smtp",))["smtp"]
        accounts.make_dir(self.home, 0o755)
        accounts.make_dir(self.config_dir, 0o755)
        accounts.make_dir(self.queue_dir, 0o755)
        accounts.make_dir(self.home / "data", 0o700, "postfix")
        tls = self._tls_files()
        cert, key = tls if tls else (Path("/nonexistent"), Path("/nonexistent"))
        variables: dict[str, Any] = {
            "ingest_domains": options.ingest_domain,
            "ingest_domain": [options.ingest_domain],
            "config_directory": str(self.config_dir),
            "milter_socket": str(layout.milter_socket),
            "tls_cert_file": str(cert),
            "tls_key_file": str(key),
            "smtpd_listen": f"{options.listen_address}:{port}",
            "pipe_concurrency": str(options.pipe_concurrency),
            "pipe_user": options.service_user,
            "deliver_command": deliver_command(),
            "config_file": str(layout.config_file),
            "postmaster_address": DEV_POSTMASTER_ADDRESS,
            **self._pgsql_variables(),
        }
        retry = max(1, options.retry_seconds)
        overlay = {
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.home / "data"),
            "maillog_file": str(layout.log(self.name)),
            "maillog_file_prefixes": str(layout.base),
            "myhostname": f"mx.{options.ingest_domain}",
            "mydomain": options.ingest_domain,
            "inet_interfaces": options.listen_address,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # Bounces and anything else not for an ingest domain: logged, never sent out.
            "default_transport": "discard:the devstack never sends mail out",
            "alias_maps": "",
            "alias_database": "",
            "queue_run_delay": f"{retry}s",
            "minimal_backoff_time": f"{retry}s",
            "maximal_backoff_time": f"{2 * retry}s",
            "transport_retry_time": f"{retry}s",
            "delay_warning_time": "0",
        }
        if tls is None:
            overlay["smtpd_tls_security_level"] = "none"
        if not options.milter:
            overlay["smtpd_milters"] = ""
        rendered = render_file("main.cf", variables)
        if options.uses_external("ORDERFLOW_DATABASE_URL"):  # no Postfix role there: no lookup
            overlay["relay_domains"] = options.ingest_domain
            overlay["virtual_alias_maps"] = without_custom_role_mailboxes(rendered)
        overlay.update(options.postfix_overrides)
        main_cf = merge_main_cf(rendered, overlay, "devstack overlay")
        master_cf = BASE_MASTER_CF + render_file("master.cf", variables)
        transport = render_file("orderflow_transport", variables)
        role_mailboxes = render_file("role_mailboxes", variables)
        accounts.write_file(self.config_dir / "main.cf", main_cf, 0o644)
        accounts.write_file(self.config_dir / "master.cf", master_cf, 0o644)
        accounts.write_file(self.config_dir / "orderflow_transport", transport, 0o644)
        accounts.write_file(self.config_dir / "role_mailboxes", role_mailboxes, 0o644)
        domain_regexp = render_file(ROLE_MAILBOX_DOMAIN, variables)
        accounts.write_file(self.config_dir / ROLE_MAILBOX_DOMAIN, domain_regexp, 0o644)
        for name in CUSTOM_DOMAIN_MAPS:  # hold the Postfix role's password: root:postfix 0640
            text = render_file(name, variables)
            accounts.write_file(self.config_dir / name, text, 0o640, "root", "postfix")

    def _pgsql_variables(self) -> dict[str, str]:
        """Where proxymap finds the custom domains: this stack's PostgreSQL, Postfix's role."""
        from orderflow_ingest.devstack.postgres import (
            DATABASE,
            POSTFIX_ROLE,
            postfix_role_password,
        )

        # Read, not `ports()`: that one checks the port is free for postgres's own start,
        # and fails whenever Postfix is (re)started while PostgreSQL runs.
        port = self.ctx.port("postgres.port")
        host = self.ctx.options.listen_address
        return {
            "pgsql_hosts": f"inet:{host}:{port}",
            "pgsql_user": POSTFIX_ROLE,
            "pgsql_password": postfix_role_password(self.ctx),
            "pgsql_dbname": DATABASE,
        }

    def _postfix(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        config = str(self.config_dir.resolve())
        argv, _ = in_netns(self.ctx.options.netns, [POSTFIX, "-c", config, command])
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # master must not get the test runner's Ctrl-C
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
        )

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _start(self) -> None:
        if not Path(POSTFIX).is_file():
            raise self.fail(f"{POSTFIX} is missing (apt-get install postfix)")
        self.render()
        accounts.touch(self.log, 0o640)
        result = self._postfix("start")
        pid = self._master_pid()
        ref = ProcessRef.of(pid) if pid else None
        if result.returncode != 0 or ref is None:
            raise self.fail(
                f"postfix start failed (exit {result.returncode}): "
                f"{(result.stderr + result.stdout).strip()}"
            )
        self.ctx.record(self.name, ref, None)
        port = self.smtp_port()
        host = self.ctx.options.listen_address
        if not wait_until(lambda: _banner(port, host), START_TIMEOUT, 0.05, alive=ref.alive):
            raise self.fail(f"no SMTP banner on {host}:{port} within {START_TIMEOUT}s")
        if not listens_on(ref.pid, port):
            raise self.fail(f"port {port} does not belong to the Postfix master we started")

    def stop(self) -> None:
        ref = self.ctx.ref(self.name)
        if ref is not None and ref.alive():
            self._postfix("stop")
            if not wait_until(lambda: not ref.alive(), self.stop_timeout):
                self._postfix("abort")
        super().stop()

    def _postqueue(self, flag: str) -> str:
        # In a network namespace postqueue must run there: it checks inet_interfaces.
        config = str(self.config_dir.resolve())
        argv, _ = in_netns(self.ctx.options.netns, [POSTQUEUE, "-c", config, flag])
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise self.fail(f"postqueue {flag} failed: {result.stderr.strip()}")
        return result.stdout

    def postqueue(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._postqueue("-j").splitlines() if line.strip()]

    def flush(self) -> None:
        self._postqueue("-f")


def deliver_command() -> str:
    """What pipe(8) runs: the compiled client, built first if missing or out of date."""
    return str(ensure_built())


def _banner(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as conn:
            conn.settimeout(2)
            greeting = conn.recv(512)
            conn.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220")
    except OSError:
        return False


def without_custom_role_mailboxes(main_cf: str) -> str:
    """virtual_alias_maps of a rendered main.cf without the custom domains' pipemap (no
    PostgreSQL role for Postfix: proxymap could not open the table)."""
    for line in main_cf.splitlines():
        name, equals, value = line.partition(" = ")
        if equals and name == "virtual_alias_maps":
            return CUSTOM_ROLE_MAILBOXES.sub("", value)
    raise ValueError("main.cf has no virtual_alias_maps")
