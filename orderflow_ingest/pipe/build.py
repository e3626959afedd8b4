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


def build(output: Path | None = None) -> bool:
    """Compile to `output` (default: client_path()); True when the file changed.

    Compiled beside the target and renamed over it, so a pipe(8) delivery running at that
    moment finds the old or the new program, never half of one.
    """
    output = output or client_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{CLIENT_NAME}.", dir=output.parent)
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler(), *CFLAGS, "-o", temporary, str(SOURCE)],
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
    """The client, compiled first if it is missing or older than its source."""
    output = output or client_path()
    if not output.exists() or output.stat().st_mtime < SOURCE.stat().st_mtime:
        build(output)
    return output
