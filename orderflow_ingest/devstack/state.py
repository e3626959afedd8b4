"""stack.json: what `dev up` started, so `dev down` in another process can stop exactly that.

It holds pids (with start times), ports, generated passwords and the options the stack was
made with. It is root-only (0600): the passwords are throwaway but still passwords.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "stack.json"
STATE_VERSION = 1


@dataclass
class StackState:
    options: dict[str, Any] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    processes: dict[str, dict[str, int]] = field(default_factory=dict)
    done: dict[str, bool] = field(default_factory=dict)

    def save(self, base_dir: Path) -> None:
        data = {
            "version": STATE_VERSION,
            "options": self.options,
            "ports": self.ports,
            "secrets": self.secrets,
            "processes": self.processes,
            "done": self.done,
        }
        path = base_dir / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
        os.replace(tmp, path)

    @classmethod
    def load(cls, base_dir: Path) -> StackState | None:
        path = base_dir / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unknown state version {data.get('version')!r}")
        return cls(
            options=data.get("options", {}),
            ports={key: int(value) for key, value in data.get("ports", {}).items()},
            secrets=data.get("secrets", {}),
            processes=data.get("processes", {}),
            done=data.get("done", {}),
        )
