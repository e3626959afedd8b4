"""The one error the devstack raises: it names the component and points at its log."""

from __future__ import annotations

from pathlib import Path

LOG_TAIL_LINES = 25


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, so a failure explains itself without a second command."""
    if path is None or not path.is_file():
        return ""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class StackError(RuntimeError):
    """A component failed to start, stop or answer."""

    def __init__(self, component: str, message: str, log: Path | None = None):
        self.component = component
        self.log = log
        text = f"{component}: {message}"
        if log is not None:
            text += f" (log: {log})"
            tail = log_tail(log)
            if tail:
                text += "\n--- last lines of " + log.name + " ---\n" + tail
        super().__init__(text)
