"""System users and file ownership for the devstack.

Postfix refuses to run pipe(8) commands as root, and PostgreSQL refuses to run as root at all,
so the stack needs unprivileged users, as a real mail host has: `postgres` for the database
and `orderflow` for the pipe client and our services (the same user as in production).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from orderflow_ingest.devstack.errors import StackError


def require_root() -> None:
    if os.geteuid() != 0:
        raise StackError(
            "devstack",
            "must run as root: it starts Postfix and runs services as unprivileged users",
        )


def ensure_system_user(name: str) -> None:
    """Create a locked system user with its own group, no home and no shell, if missing."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and result.returncode != 9:  # 9: created meanwhile
        raise StackError("devstack", f"useradd {name} failed: {result.stderr.strip()}")


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ids(user: str, group: str | None = None) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    return entry.pw_uid, gid


def make_dir(path: Path, mode: int, user: str = "root", group: str | None = None) -> Path:
    """Create (or fix) a directory with exactly this owner and mode."""
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = ids(user, group)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def write_file(
    path: Path, text: str, mode: int, user: str = "root", group: str | None = None
) -> Path:
    """Write a file that may hold secrets: the mode is set before any content is written."""
    uid, gid = ids(user, group)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def touch(path: Path, mode: int, user: str = "root", group: str | None = None) -> Path:
    """Create a log file the given user can append to, keeping what is already there."""
    uid, gid = ids(user, group)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path
