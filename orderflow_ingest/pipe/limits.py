"""Postfix's limits the pipe path must fit inside, read from the Postfix instance itself.

pipe(8) kills `deliver` after `orderflow_time_limit` and then *bounces* the message; the client
gives up with 75 (a retry) after ORDERFLOW_DELIVER_TIMEOUT plus CLIENT_GRACE. So the timeout
must end before pipe(8)'s limit, or a slow backend turns into bounces to the sender. Postfix's
`message_size_limit` bounds what the service accepts on its socket. Both come from Postfix
(postconf on ORDERFLOW_POSTFIX_CONFIG_DIR), so there is one place for each, not a copy in our
settings that can drift. Used at the service's start (refuse) and by `doctor` (report).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from orderflow_ingest.pipe.protocol import MESSAGE_MARGIN
from orderflow_ingest.settings import Settings, SettingsError

TRANSPORT = "orderflow"  # the master.cf service of postfix-config/master.cf
TIME_LIMIT = f"{TRANSPORT}_time_limit"
# deliver.c arms its alarm at the timeout plus one second; keep a second more for exit.
CLIENT_GRACE = 2.0
POSTCONF_TIMEOUT = 20.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME = re.compile(r"([0-9]+)([smhdw]?)")


@dataclass(frozen=True)
class PipeLimits:
    time_limit: float  # seconds pipe(8) lets `deliver` run
    message_size_limit: int  # bytes; Postfix refuses larger mail at SMTP

    @property
    def max_message(self) -> int:
        """The largest message the service takes from a client."""
        return self.message_size_limit + MESSAGE_MARGIN


def postfix_seconds(text: str) -> float:
    """A Postfix time value (`300s`, `5m`, `300`: seconds by default) in seconds."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a Postfix time value: {text!r}")
    return float(int(match.group(1)) * _UNITS[match.group(2) or "s"])


def _postconf(config_dir: str, *args: str) -> str:
    binary = shutil.which("postconf") or "/usr/sbin/postconf"
    result = subprocess.run(
        [binary, "-c", config_dir, *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=POSTCONF_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise SettingsError(
            f"ORDERFLOW_POSTFIX_CONFIG_DIR={config_dir}: postconf failed"
            + (f": {lines[-1]}" if lines else "")
        )
    return result.stdout


def read_pipe_limits(settings: Settings) -> PipeLimits:
    """pipe(8)'s time limit for our transport (a master.cf -o override wins) and the size limit."""
    config_dir = settings.postfix_config_dir
    values = _postconf(config_dir, "-x", "-h", TIME_LIMIT, "message_size_limit").split("\n")
    if len(values) < 2:
        raise SettingsError(f"ORDERFLOW_POSTFIX_CONFIG_DIR={config_dir}: no {TIME_LIMIT}")
    time_text, size_text = values[0], values[1]
    override = _postconf(config_dir, "-P", f"{TRANSPORT}/unix/{TIME_LIMIT}").strip()
    if override:
        time_text = override.partition("=")[2]
    try:
        time_limit = postfix_seconds(time_text)
    except ValueError as error:
        raise SettingsError(f"{TIME_LIMIT} in {config_dir}: {error}") from None
    if not size_text.strip().isdigit() or int(size_text) <= 0:
        raise SettingsError(
            f"message_size_limit in {config_dir} is {size_text.strip()!r}: the delivery"
            " service needs a positive byte limit"
        )
    return PipeLimits(time_limit=time_limit, message_size_limit=int(size_text))


def deliver_timeout_problem(settings: Settings, limits: PipeLimits) -> str | None:
    """Why ORDERFLOW_DELIVER_TIMEOUT does not fit inside pipe(8)'s time limit, or None."""
    if settings.deliver_timeout + CLIENT_GRACE <= limits.time_limit:
        return None
    return (
        f"ORDERFLOW_DELIVER_TIMEOUT={settings.deliver_timeout:g} does not end before"
        f" {TIME_LIMIT}={limits.time_limit:g}s of {settings.postfix_config_dir} (less"
        f" {CLIENT_GRACE:g}s): pipe(8) would kill deliver and bounce the message instead of"
        " deferring it; lower the timeout or raise the limit"
    )


def checked_pipe_limits(settings: Settings) -> PipeLimits:
    """The limits, or SettingsError when the deliver timeout does not fit inside them."""
    limits = read_pipe_limits(settings)
    problem = deliver_timeout_problem(settings, limits)
    if problem is not None:
        raise SettingsError(problem)
    return limits
