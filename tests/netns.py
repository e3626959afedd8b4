"""Test hosts in Linux network namespaces, joined by veth pairs on one private bridge.

    with Lab(["backends", "mx1", "mx2", "sender"], resolver_on_gateway=True) as lab:
        lab.hosts["mx1"].address      # 10.77.N.11 in namespace ofi-<token>-mx1
        lab.gateway                    # 10.77.N.254: this (the test's) side of the bridge
        lab.run("mx1", ["ip", "addr"]) # a command inside a host's namespace

Each host is a namespace with its own loopback and one veth (`eth0`) on a /24 private to this
lab; the bridge lives in the test's own namespace, which also gets an address on it, so the
test process reaches every host (to send, to query PostgreSQL, to read Redis) while the hosts
reach each other only over their veth links. No routing, no NAT, no sysctl: nothing of the
machine's own network changes, and nothing listens outside the lab's subnet.

Names carry a random token, and the subnet is chosen under a lock among those no interface of
the machine uses, so parallel runs never clash. Everything is torn down on exit, failure
included; a lab whose test process died without tearing down (SIGKILL) is removed by the next
lab that starts (its owner pid is recorded under /run/orderflow-netns).

Needs root and a kernel that allows `ip netns add`; `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

IP = "ip"
REGISTRY = Path("/run/orderflow-netns")
NETNS_ETC = Path("/etc/netns")
SUBNET_PREFIX = "10.77"
GATEWAY_HOST = 254
FIRST_HOST = 10


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which(IP) is None:
        return "the ip command (iproute2) is missing"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    probe = f"ofi-probe-{secrets.token_hex(3)}"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    try:
        link = _ip("link", "add", "ofiprobe0", "type", "veth", "peer", "name", "eth0",
                   "netns", probe, check=False)  # fmt: skip
        if link.returncode != 0:
            return f"veth pairs are not available: {link.stderr.strip()}"
    finally:
        _ip("link", "del", "ofiprobe0", check=False)
        _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    name: str  # the test's name for it: "mx1"
    netns: str  # the namespace: "ofi-<token>-mx1"
    address: str  # its address on the lab's link
    veth: str  # the bridge-side end of its veth pair (in the test's namespace)


class Lab:
    """A bridge, a /24 and one namespace per host; a context manager that always tears down."""

    def __init__(self, names: Sequence[str], resolver_on_gateway: bool = False):
        """resolver_on_gateway: every host's resolv.conf names the gateway (a DNS server the
        test runs on the bridge's address, port 53)."""
        self.names = list(names)
        self.token = secrets.token_hex(3)
        self.bridge = f"ofi{self.token}br"
        self.subnet = ""
        self.gateway = ""
        self.hosts: dict[str, Host] = {}
        self.resolver_on_gateway = resolver_on_gateway
        self._record = REGISTRY / self.token

    # --- set-up and teardown -------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        REGISTRY.mkdir(mode=0o700, exist_ok=True)
        with _lock():
            remove_stale_labs()
            third = _free_subnet()
            self.subnet = f"{SUBNET_PREFIX}.{third}.0/24"
            self.gateway = f"{SUBNET_PREFIX}.{third}.{GATEWAY_HOST}"
            for index, name in enumerate(self.names):
                self.hosts[name] = Host(
                    name=name,
                    netns=f"ofi-{self.token}-{name}",
                    address=f"{SUBNET_PREFIX}.{third}.{FIRST_HOST + index}",
                    veth=f"ofi{self.token}v{index}",
                )
            self._save()
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        for host in self.hosts.values():
            self._add_host(host)

    def _add_host(self, host: Host) -> None:
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        inside = ("-n", host.netns)
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        if self.resolver_on_gateway:
            # `ip netns exec` bind-mounts /etc/netns/<name>/* over /etc/*: the host's resolver.
            etc = NETNS_ETC / host.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(
                f"nameserver {self.gateway}\noptions timeout:2 attempts:2\n"
            )
            (etc / "resolv.conf").chmod(0o644)

    def down(self) -> None:
        teardown(self.token, list(self.hosts.values()), self.bridge)
        self._record.unlink(missing_ok=True)

    def _save(self) -> None:
        data = {
            "pid": os.getpid(),
            "bridge": self.bridge,
            "hosts": [[h.name, h.netns, h.address, h.veth] for h in self.hosts.values()],
        }
        self._record.write_text(json.dumps(data))

    # --- using it ------------------------------------------------------------------------------

    def netns(self, name: str) -> str:
        return self.hosts[name].netns

    def address(self, name: str) -> str:
        return self.hosts[name].address

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.netns(name), *argv]

    def run(
        self, name: str, argv: Sequence[str], timeout: float = 120, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """A command inside host `name`'s namespace (its /etc/netns files mounted)."""
        return subprocess.run(  # type: ignore[call-overload]
            self.argv(name, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def pids(self, name: str) -> list[int]:
        """Every process in host `name`'s namespace."""
        result = _ip("netns", "pids", self.netns(name), check=False)
        return [int(pid) for pid in result.stdout.split() if pid.isdigit()]

    def link(self, name: str, up: bool) -> None:
        """Pull (or plug back) host `name`'s cable: its bridge-side veth down or up."""
        _ip("link", "set", self.hosts[name].veth, "up" if up else "down")


def teardown(token: str, hosts: Sequence[Host], bridge: str) -> None:
    """Kill what still runs in the lab's namespaces, then delete them, the veths and the bridge."""
    for host in hosts:
        _kill_all(host.netns)
        _ip("netns", "del", host.netns, check=False)  # takes its eth0 and so the veth pair
        _ip("link", "del", host.veth, check=False)
        shutil.rmtree(NETNS_ETC / host.netns, ignore_errors=True)
    _ip("link", "del", bridge, check=False)
    with contextlib.suppress(OSError):
        if NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()


def _kill_all(netns: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = _ip("netns", "pids", netns, check=False)
        pids = [int(pid) for pid in result.stdout.split() if pid.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def remove_stale_labs() -> None:
    """Tear down labs whose test process is gone (killed before its own teardown ran)."""
    for record in REGISTRY.glob("*"):
        if record.name.startswith("."):
            continue
        try:
            data = json.loads(record.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError):
            record.unlink(missing_ok=True)
            continue
        if _alive(pid):
            continue
        hosts = [Host(*fields) for fields in data.get("hosts", [])]
        teardown(record.name, hosts, data.get("bridge", ""))
        record.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> int:
    """A third octet of 10.77.x.0/24 that no address of the machine uses."""
    used = _ip("-4", "-o", "addr", "show").stdout
    routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
    taken = used + routes
    candidates = list(range(1, 250))
    secrets.SystemRandom().shuffle(candidates)
    for third in candidates:
        if f"{SUBNET_PREFIX}.{third}." not in taken:
            return third
    raise NetnsError(f"no free {SUBNET_PREFIX}.x.0/24 subnet")


@contextlib.contextmanager
def _lock() -> Iterator[object]:
    with (REGISTRY / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
