"""What every devstack component shares: the directory layout, the saved state, the base class."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from orderflow_ingest.devstack.errors import StackError
from orderflow_ingest.devstack.options import StackOptions
from orderflow_ingest.devstack.processes import ProcessRef, free_ports, port_is_free, terminate
from orderflow_ingest.devstack.state import StackState

# Unix socket paths are limited to 107 bytes; checked up front for a clear error.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Layout:
    """Every path of a stack, all under base_dir."""

    base: Path

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def spool(self) -> Path:
        return self.base / "spool"

    @property
    def config_file(self) -> Path:
        return self.base / "orderflow.env"

    @property
    def deliver_socket(self) -> Path:
        return self.run / "deliver.sock"

    @property
    def milter_socket(self) -> Path:
        return self.run / "milter.sock"

    def log(self, name: str) -> Path:
        if name == "postfix":
            return self.logs / "maillog"
        return self.logs / f"{name}.log"


def venv_bin(name: str) -> Path:
    """A program of the virtualenv we run in (orderflow-ingest, weed)."""
    return Path(sys.prefix) / "bin" / name


class Context:
    """Shared by the components of one stack: layout, options, state and our child processes."""

    def __init__(self, layout: Layout, options: StackOptions, state: StackState):
        self.layout = layout
        self.options = options
        self.state = state
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def save(self) -> None:
        with self._lock:
            self.state.save(self.layout.base)

    def record(self, name: str, ref: ProcessRef, popen: subprocess.Popen[bytes] | None) -> None:
        with self._lock:
            self.state.processes[name] = ref.as_dict()
            if popen is not None:
                previous = self.children.get(name)
                if previous is not None and previous is not popen:
                    previous.poll()  # reap a predecessor that died on its own (no zombie)
                self.children[name] = popen
        self.save()

    def forget(self, name: str) -> None:
        with self._lock:
            self.state.processes.pop(name, None)
            self.children.pop(name, None)
        self.save()

    def ref(self, name: str) -> ProcessRef | None:
        data = self.state.processes.get(name)
        return None if data is None else ProcessRef.from_dict(data)

    def allocate_ports(self, component: str, names: tuple[str, ...]) -> None:
        """Choose ports not chosen yet (no check of those already chosen: they may be ours)."""
        with self._lock:
            missing = [f"{component}.{name}" for name in names]
            missing = [key for key in missing if key not in self.state.ports]
            for key, port in zip(missing, free_ports(len(missing)), strict=True):
                self.state.ports[key] = port
        self.save()

    def ports(self, component: str, names: tuple[str, ...]) -> dict[str, int]:
        """This component's ports: chosen once, reused by every later start.

        A port taken by someone else before our first start is re-chosen; after that it is
        an error, because data on disk (and clients' settings) already name the port.
        """
        keys = [f"{component}.{name}" for name in names]
        with self._lock:
            missing = [key for key in keys if key not in self.state.ports]
            if missing:
                for key, port in zip(missing, free_ports(len(missing)), strict=True):
                    self.state.ports[key] = port
            busy = [key for key in keys if not port_is_free(self.state.ports[key])]
            if busy and not self.state.done.get(f"{component}.started"):
                for key, port in zip(busy, free_ports(len(busy)), strict=True):
                    self.state.ports[key] = port
                busy = [key for key in keys if not port_is_free(self.state.ports[key])]
            if busy:
                raise StackError(
                    component,
                    f"port {self.state.ports[busy[0]]} ({busy[0]}) is in use by another process",
                )
            result = {name: self.state.ports[key] for name, key in zip(names, keys, strict=True)}
        self.save()
        return result

    def port(self, key: str) -> int:
        return self.state.ports[key]

    def mark_started(self, component: str) -> None:
        with self._lock:
            self.state.done[f"{component}.started"] = True
        self.save()


class Component:
    """One server of the stack. Subclasses implement _start; stop and status are shared."""

    name = "component"
    stop_timeout = 15.0
    # Whether the process leads its own process group (we started it with a new session), so
    # stopping it also stops its children (RQ work horses).
    group_leader = True

    def __init__(self, ctx: Context):
        self.ctx = ctx

    @property
    def log(self) -> Path:
        return self.ctx.layout.log(self.name)

    def running(self) -> bool:
        ref = self.ctx.ref(self.name)
        return ref is not None and ref.alive()

    def start(self) -> None:
        if self.running():
            return
        self._start()
        self.ctx.mark_started(self.name)

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        ref = self.ctx.ref(self.name)
        if ref is not None:
            terminate(ref, self.stop_timeout, self.ctx.children.get(self.name), self.group_leader)
        self.ctx.forget(self.name)

    def fail(self, message: str) -> StackError:
        return StackError(self.name, message, self.log)


def check_reachable(path: Path, what: str) -> None:
    """The postgres, postfix and orderflow users must reach `path`: every parent directory
    needs the execute bit for others (a checkout under /root, mode 0700, fails here)."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise StackError(
                "devstack",
                f"{what} {path} is not reachable by unprivileged users: {parent} lacks o+x "
                "(choose a directory under /tmp or /srv, or chmod o+x it)",
            )


def check_socket_path(component: str, path: Path) -> None:
    if len(str(path)) > MAX_SOCKET_PATH:
        raise StackError(
            component,
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --dir",
        )
