"""Compiling the per-message pipe client (deliver.c) into the virtualenv's bin/.

One place for the compiler command: `make venv`, the devstack and the Ansible role all call
`orderflow-ingest build-deliver` (or `ensure_built`). The client is C because pipe(8) starts it
once per message: a Python interpreter alone costs ~8 ms of CPU, the C client under 1 ms.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT_NAME = "orderflow-deliver"
SOURCE = Path(__file__).with_name("deliver.c")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong")


class BuildError(Exception):
    pass


def client_path() -> Path:
    """Where pipe(8) finds the client: beside this virtualenv's python3."""
    return Path(sys.prefix) / "bin" / CLIENT_NAME


def compiler() -> str:
    found = shutil.which("cc") or shutil.which("gcc")
    if found is None:
        raise BuildError("no C compiler (cc or gcc) on PATH: install gcc (Debian: apt install gcc)")
    return found


def _c_string(text: str) -> str:
    """A C string literal of plain printable ASCII (paths and versions need nothing else)."""
    if not text.isascii() or not text.isprintable() or '"' in text or "\\" in text:
        raise BuildError(f"{text!r} cannot be passed to the compiler as a plain C string")
    return f'"{text}"'


def defines() -> tuple[str, ...]:
    """The constants deliver.c shares with the Python side, from the Python source.

    One place for each: the wire format's VERSION, MAX_ENVELOPE and CHUNK (pipe/protocol.py),
    and the settings defaults and limit the client repeats (settings.py). deliver.c refuses
    to compile without them.
    """
    from orderflow_ingest import settings
    from orderflow_ingest.pipe import protocol

    defaults = {setting.name: setting.default for setting in settings.SETTINGS}
    socket, timeout = defaults["ORDERFLOW_DELIVER_SOCKET"], defaults["ORDERFLOW_DELIVER_TIMEOUT"]
    assert socket is not None and timeout is not None
    return (
        f"-DVERSION={_c_string(protocol.VERSION)}",
        f"-DMAX_ENVELOPE={int(protocol.MAX_ENVELOPE)}",
        f"-DCHUNK={int(protocol.CHUNK)}",
        f"-DDEFAULT_CONFIG={_c_string(settings.DEFAULT_CONFIG_PATH)}",
        f"-DDEFAULT_SOCKET={_c_string(socket)}",
        f"-DDEFAULT_TIMEOUT={_c_string(timeout)}",
        f"-DMAX_DELIVER_TIMEOUT={int(settings.MAX_DELIVER_TIMEOUT)}",
    )


def build(output: Path | None = None, extra_flags: tuple[str, ...] = ()) -> bool:
    """Compile to `output` (default: client_path()); True when the file changed.

    Compiled beside the target and renamed over it, so a pipe(8) delivery running at that
    moment finds the old or the new program, never half of one. `extra_flags` are for test
    builds (tests/test_deliver_settings_parity.py compiles a settings probe).
    """
    output = output or client_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{CLIENT_NAME}.", dir=output.parent)
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler(), *CFLAGS, *defines(), *extra_flags, "-o", temporary, str(SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"compiling {SOURCE} failed:\n{result.stderr.strip()}")
        if output.exists() and output.read_bytes() == Path(temporary).read_bytes():
            os.utime(output)  # up to date with its source now (make and ensure_built look)
            return False
        os.chmod(temporary, 0o755)
        os.replace(temporary, output)
        return True
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def ensure_built(output: Path | None = None) -> Path:
    """The client, compiled first if it is missing or older than its sources."""
    output = output or client_path()
    # The Python files the -D constants come from: a change to one rebuilds the client too.
    sources = (SOURCE, SOURCE.with_name("protocol.py"), SOURCE.parent.parent / "settings.py")
    newest = max(path.stat().st_mtime for path in sources)
    if not output.exists() or output.stat().st_mtime < newest:
        build(output)
    return output
