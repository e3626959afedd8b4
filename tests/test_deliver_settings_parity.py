"""deliver.c reads its settings as settings.py does: the same env file and environment give
both the same ORDERFLOW_DELIVER_SOCKET and ORDERFLOW_DELIVER_TIMEOUT, or make both refuse.

The client is compiled with -DSETTINGS_PROBE, which prints the two values it read and exits
instead of delivering; the Python side is `load_settings` itself. Out of scope, on purpose:
keys the client does not read (an unknown key, `export\\tKEY`, a key behind a byte-order mark)
and the values of other settings. The services refuse those at start (and `doctor` names
them), while the client ignores them: it needs only its two settings to hand mail over.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orderflow_ingest.pipe.build import build
from orderflow_ingest.settings import SettingsError, load_settings

MISCONFIGURED = b"temporary failure (transport misconfigured)\n"
# The settings a service requires; the client never reads them.
REQUIRED = {
    "ORDERFLOW_DATABASE_URL": "postgresql://orderflow@localhost/orderflow",
    "ORDERFLOW_REDIS_URL": "redis://localhost:6379/0",
    "ORDERFLOW_S3_BUCKET": "orderflow",
    "ORDERFLOW_INGEST_DOMAINS": "orderflow.test",
}
SOCKET = "ORDERFLOW_DELIVER_SOCKET"
TIMEOUT = "ORDERFLOW_DELIVER_TIMEOUT"

Outcome = tuple[str, float] | None  # (socket, timeout), or None: refused


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("probe") / "orderflow-deliver-probe"
    build(output, extra_flags=("-DSETTINGS_PROBE",))
    return output


def python_reads(config: Path, environ: dict[str, str]) -> Outcome:
    try:
        settings = load_settings(str(config), {**REQUIRED, **environ})
    except (SettingsError, UnicodeDecodeError):  # a file that is not UTF-8 stops it too
        return None
    return settings.deliver_socket, settings.deliver_timeout


def client_reads(probe: Path, config: Path, environ: dict[str, str]) -> Outcome:
    result = subprocess.run(
        [str(probe), "--config", str(config), "--sender", "a@b", "--", "x@y"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={key: os.fsencode(value) for key, value in environ.items()},
        timeout=30,
        check=False,
    )
    if result.returncode == 75:
        assert result.stdout == MISCONFIGURED
        return None
    assert result.returncode == 0, result
    socket, timeout, rest = result.stdout.split(b"\n")
    assert rest == b""
    return os.fsdecode(socket), float(timeout)


def assert_same(probe: Path, config: Path, environ: dict[str, str], expected: str) -> None:
    python, client = python_reads(config, environ), client_reads(probe, config, environ)
    assert python == client, f"settings.py: {python}, deliver.c: {client}"
    assert ("refused" if python is None else "read") == expected


FILES: list[tuple[str, bytes, str]] = [
    # (what, file content, "read" or "refused")
    ("empty file: both defaults", b"", "read"),
    ("a missing setting: its default", b"ORDERFLOW_DELIVER_TIMEOUT=30\n", "read"),
    (
        "comments and blank lines",
        b"# the role writes this\n\n   \n  # ORDERFLOW_DELIVER_TIMEOUT=1\n"
        b"ORDERFLOW_DELIVER_SOCKET=/run/a.sock\n#ORDERFLOW_DELIVER_SOCKET=/run/b.sock\n",
        "read",
    ),
    ("whitespace around key and value", b"\t ORDERFLOW_DELIVER_TIMEOUT \t=\t 12.5 \t\n", "read"),
    ("export", b"export ORDERFLOW_DELIVER_SOCKET=/run/e.sock\n", "read"),
    ("export and spaces", b"  export    ORDERFLOW_DELIVER_TIMEOUT = 3  \n", "read"),
    ("double quotes", b'ORDERFLOW_DELIVER_SOCKET="/run/q.sock"\n', "read"),
    ("single quotes", b"ORDERFLOW_DELIVER_TIMEOUT='4'\n", "read"),
    ("quotes keep inner spaces", b'ORDERFLOW_DELIVER_SOCKET="/run/s.sock "\n', "read"),
    ("quotes keep a leading space", b'ORDERFLOW_DELIVER_SOCKET=" /run/s.sock"\n', "refused"),
    ("mismatched quotes stay", b"ORDERFLOW_DELIVER_SOCKET=\"/run/q.sock'\n", "refused"),
    ("one quote alone", b'ORDERFLOW_DELIVER_TIMEOUT="\n', "refused"),
    ("empty quotes", b"ORDERFLOW_DELIVER_TIMEOUT=''\n", "refused"),
    ("only one pair of quotes goes", b"ORDERFLOW_DELIVER_TIMEOUT=\"'5'\"\n", "refused"),
    (
        "duplicates: the last wins",
        b"ORDERFLOW_DELIVER_TIMEOUT=5\nORDERFLOW_DELIVER_TIMEOUT=6\n"
        b"ORDERFLOW_DELIVER_SOCKET=/run/1.sock\nORDERFLOW_DELIVER_SOCKET=/run/2.sock\n",
        "read",
    ),
    (
        "duplicates: a bad value overwritten is never seen",
        b"ORDERFLOW_DELIVER_TIMEOUT=soon\nORDERFLOW_DELIVER_TIMEOUT=7\n",
        "read",
    ),
    (
        "duplicates: a good value overwritten by a bad one",
        b"ORDERFLOW_DELIVER_TIMEOUT=7\nORDERFLOW_DELIVER_TIMEOUT=soon\n",
        "refused",
    ),
    ("a line without =", b"ORDERFLOW_DELIVER_SOCKET /run/a.sock\n", "refused"),
    ("a bare word", b"ORDERFLOW_DELIVER_TIMEOUT=5\nnonsense\n", "refused"),
    ("an empty key", b"=5\n", "refused"),
    ("a blank key", b"  \t = /run/a.sock\n", "refused"),
    ("export alone", b"export\n", "refused"),
    ("export and no key", b"export =5\n", "refused"),
    ("= in the value", b"ORDERFLOW_DELIVER_SOCKET=/run/a=b.sock\n", "read"),
    (
        "CRLF line ends",
        b"ORDERFLOW_DELIVER_SOCKET=/run/c.sock\r\nORDERFLOW_DELIVER_TIMEOUT=8\r\n",
        "read",
    ),
    ("a lone CR ends a line", b"# comment\rORDERFLOW_DELIVER_TIMEOUT=9\n", "read"),
    ("a lone CR ends a value", b"ORDERFLOW_DELIVER_TIMEOUT=9\rjunk\n", "refused"),
    ("Unicode spaces are stripped", "ORDERFLOW_DELIVER_TIMEOUT=\u00a010\u3000\n".encode(), "read"),
    (
        "separator characters are whitespace to Python",
        b"\x1cORDERFLOW_DELIVER_SOCKET\x1f=\x1d/run/x.sock\x1e\n",
        "read",
    ),
    ("a line separator is whitespace", "ORDERFLOW_DELIVER_TIMEOUT=11\u2028\n".encode(), "read"),
    ("UTF-8 in a value", "ORDERFLOW_DELIVER_SOCKET=/run/bücher.sock\n".encode(), "read"),
    ("not UTF-8, even in a comment", b"# caf\xe9\n", "refused"),
    ("an overlong encoding", b"ORDERFLOW_DELIVER_SOCKET=/run/\xc0\xafx\n", "refused"),
    ("an encoded surrogate", b"# \xed\xa0\x80\n", "refused"),
    ("a cut-off sequence", b"ORDERFLOW_DELIVER_TIMEOUT=5 \xe2\x80\n", "refused"),
    ("a NUL in a comment", b"# \x00\nORDERFLOW_DELIVER_TIMEOUT=5\n", "read"),
    ("a NUL in the socket", b"ORDERFLOW_DELIVER_SOCKET=/run/a\x00b.sock\n", "refused"),
    ("a NUL in the timeout", b"ORDERFLOW_DELIVER_TIMEOUT=5\x00\n", "refused"),
    ("a relative socket", b"ORDERFLOW_DELIVER_SOCKET=run/a.sock\n", "refused"),
    ("an empty socket", b"ORDERFLOW_DELIVER_SOCKET=\n", "refused"),
    ("a socket of 107 bytes", b"ORDERFLOW_DELIVER_SOCKET=/" + b"s" * 106 + b"\n", "read"),
    ("a socket of 108 bytes", b"ORDERFLOW_DELIVER_SOCKET=/" + b"s" * 107 + b"\n", "refused"),
    (
        "a socket of 107 bytes, 53 letters",
        b"ORDERFLOW_DELIVER_SOCKET=/" + "ü".encode() * 53 + b"\n",
        "read",
    ),
]

TIMEOUTS = [
    ("240", "read"),
    ("0.5", "read"),
    ("0.001", "read"),
    ("86400", "read"),
    ("007", "read"),
    ("86400.5", "refused"),
    ("0", "refused"),
    ("0.0", "refused"),
    ("-1", "refused"),
    ("+5", "refused"),
    ("5.", "refused"),
    (".5", "refused"),
    ("1e3", "refused"),
    ("0x10", "refused"),
    ("1_0", "refused"),
    ("inf", "refused"),
    ("nan", "refused"),
    ("soon", "refused"),
    ("5s", "refused"),
    ("\uff15", "refused"),  # a fullwidth digit: float() takes it, the client would not
    ("1" + "0" * 400, "refused"),
]


@pytest.mark.parametrize(("what", "content", "expected"), FILES, ids=[case[0] for case in FILES])
def test_the_same_env_file_reads_the_same_or_is_refused_by_both(
    probe: Path, tmp_path: Path, what: str, content: bytes, expected: str
) -> None:
    config = tmp_path / "ingest.env"
    config.write_bytes(content)
    assert_same(probe, config, {}, expected)


@pytest.mark.parametrize(("value", "expected"), TIMEOUTS)
def test_the_timeout_is_plain_decimal_seconds_up_to_a_day_in_both(
    probe: Path, tmp_path: Path, value: str, expected: str
) -> None:
    config = tmp_path / "ingest.env"
    config.write_text(f"ORDERFLOW_DELIVER_TIMEOUT={value}\n", encoding="utf-8")
    assert_same(probe, config, {}, expected)
    config.write_text("")
    if "\0" not in value:  # the same value from the environment, where nothing is stripped
        assert_same(probe, config, {TIMEOUT: value}, expected)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({SOCKET: "/run/env.sock"}, "read"),  # the environment wins over the file
        ({TIMEOUT: "9"}, "read"),
        ({SOCKET: ""}, "refused"),  # set but empty is not unset
        ({TIMEOUT: " 5"}, "refused"),  # nothing is stripped from the environment
        ({TIMEOUT: "5 "}, "refused"),
        ({SOCKET: "relative.sock"}, "refused"),
        ({SOCKET: os.fsdecode(b"/run/\xff.sock")}, "refused"),  # not UTF-8
    ],
)
def test_the_environment_wins_over_the_file_in_both(
    probe: Path, tmp_path: Path, environ: dict[str, str], expected: str
) -> None:
    config = tmp_path / "ingest.env"
    config.write_text("ORDERFLOW_DELIVER_SOCKET=/run/file.sock\nORDERFLOW_DELIVER_TIMEOUT=3\n")
    assert_same(probe, config, environ, expected)


def test_a_named_file_that_cannot_be_read_is_refused_by_both(probe: Path, tmp_path: Path) -> None:
    assert_same(probe, tmp_path / "absent.env", {}, "refused")
    assert_same(probe, tmp_path, {}, "refused")  # a directory


def test_orderflow_config_names_the_file_for_both(
    probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "named.env"
    config.write_text("ORDERFLOW_DELIVER_TIMEOUT=17\n")
    environ = {"ORDERFLOW_CONFIG": str(config)}
    monkeypatch.setenv("ORDERFLOW_CONFIG", str(config))  # settings.config_path reads os.environ
    python = load_settings(None, REQUIRED)
    result = subprocess.run(
        [str(probe), "--sender", "a@b", "--", "x@y"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=environ,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result
    assert float(result.stdout.split(b"\n")[1]) == python.deliver_timeout == 17
