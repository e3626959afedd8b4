"""The per-message client pipe(8) runs (pipe/deliver.c, compiled): its arguments, settings,
wire format and every answer it can give, against a real unix-socket listener that speaks the
service's side of pipe/protocol.py. The pipe(8) contract: 0 and 67 only when the service said
so, 75 for everything else, never a traceback, path or errno in what it prints."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orderflow_ingest.pipe.build import build, client_path
from orderflow_ingest.pipe.protocol import WireEnvelope, WireError, decode

BODY = b"Subject: x\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiled from the checkout's source for this module, as `orderflow-ingest build-deliver`
    does, so a stale binary in the virtualenv cannot hide a change to deliver.c."""
    output = tmp_path_factory.mktemp("client") / "orderflow-deliver"
    build(output)
    return output


class FakeService:
    """The service's side of one connection: read everything, then answer `reply`
    (None: close without an answer; "hang": never answer)."""

    def __init__(self, path: Path, reply: bytes | str | None = b"0 delivered\n"):
        self.path = path
        self.reply = reply
        self.received = b""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # closed by the test without a client ever connecting
            return
        with conn:
            while chunk := conn.recv(65536):
                self.received += chunk
            if self.reply == "hang":
                time.sleep(30)
            elif isinstance(self.reply, bytes):
                with contextlib.suppress(OSError):  # the client may have given up already
                    conn.sendall(self.reply)

    def envelope(self) -> tuple[tuple[str, str, str], bytes]:
        """What arrived, decoded and verified as the service does (trailer count and hash)."""
        wire, message = decode(self.received, 10**9)
        assert isinstance(wire, WireEnvelope)
        return (wire.sender, wire.recipient, wire.queue_id), message

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Any]:
    started: list[FakeService] = []

    def start(reply: bytes | str | None = b"0 delivered\n") -> FakeService:
        fake = FakeService(tmp_path / f"deliver{len(started)}.sock", reply)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


def run(
    client: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    body: bytes = BODY,
    timeout: float = 30,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(client), *args],
        input=body,
        capture_output=True,
        env=env if env is not None else {},
        timeout=timeout,
        check=False,
    )


def config_for(tmp_path: Path, socket_path: Path, timeout: str = "30") -> Path:
    config = tmp_path / "ingest.env"
    config.write_text(
        "# as the role writes it\n"
        f"export ORDERFLOW_DELIVER_SOCKET='{socket_path}'\n"
        f'ORDERFLOW_DELIVER_TIMEOUT = "{timeout}"\n'
        "ORDERFLOW_INGEST_DOMAINS=orderflow.test\n"
    )
    return config


def assert_clean(result: subprocess.CompletedProcess[bytes], tmp_path: Path) -> None:
    output = result.stdout + result.stderr
    assert b"Traceback" not in output
    assert str(tmp_path).encode() not in output
    assert result.stderr == b""


def test_delivered_is_silent_and_the_envelope_and_message_arrive_intact(
    client: Path, service: Any, tmp_path: Path
) -> None:
    fake = service()
    config = config_for(tmp_path, fake.path)
    body = BODY + bytes(range(256)) * 1000  # binary, NUL bytes, more than one 64 KiB chunk
    result = run(
        client,
        ["--config", str(config), "--sender", "a@b.example", "--queue-id", "4Q1", "--", "x@y"],
        body=body,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert fake.envelope() == (("a@b.example", "x@y", "4Q1"), body)


@pytest.mark.parametrize(
    ("sender", "recipient"),
    [
        ("", "orders+acme@orderflow.test"),  # the null sender (bounces)
        ("-a b\t;$(x)@y", "--config"),  # after `--` nothing is an option
        ("müller@bücher.example", "orders+ACME@orderflow.test"),  # UTF-8, case kept
        ("x" * 1000 + "@y", "-orders+acme@orderflow.test"),
    ],
)
def test_awkward_addresses_round_trip(
    client: Path, service: Any, tmp_path: Path, sender: str, recipient: str
) -> None:
    fake = service()
    config = config_for(tmp_path, fake.path)
    result = run(client, ["--config", str(config), "--sender", sender, "--", recipient])
    assert result.returncode == 0, result.stdout
    assert fake.envelope() == ((sender, recipient, ""), BODY)


@pytest.mark.parametrize(
    ("reply", "status", "printed"),
    [
        (b"67 unknown recipient orders+nope\n", 67, b"unknown recipient orders+nope\n"),
        (b"75 temporary failure (storage), try again later\n", 75, b"temporary failure"),
        (b"64 what the client never relays\n", 75, b"temporary failure, try again later\n"),
        (b"1 bounce me\n", 75, b"temporary failure, try again later\n"),
        (b"garbled\n", 75, b"garbled reply from delivery service\n"),
        (b"0 delivered", 75, b"delivery service unavailable"),  # no newline: answer cut off
        (None, 75, b"delivery service unavailable"),  # closed without an answer
        (b"67 tab\tand\x1b[31m escapes\n", 67, b"tab?and?[31m escapes\n"),
    ],
)
def test_only_the_services_0_67_and_75_pass_everything_else_defers(
    client: Path,
    service: Any,
    tmp_path: Path,
    reply: bytes | None,
    status: int,
    printed: bytes,
) -> None:
    fake = service(reply)
    config = config_for(tmp_path, fake.path)
    result = run(client, ["--config", str(config), "--sender", "a@b", "--", "x@y"])
    assert result.returncode == status
    assert printed in result.stdout
    assert_clean(result, tmp_path)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--sender"],
        ["--sender", "a@b"],  # no `--`
        ["--sender", "a@b", "--"],  # no recipient
        ["--sender", "a@b", "--", "x@y", "z@y"],  # one recipient per delivery
        ["--", "x@y"],  # no --sender
        ["--sender", "a@b", "--bogus", "1", "--", "x@y"],
    ],
)
def test_usage_errors_defer_rather_than_bounce(
    client: Path, service: Any, tmp_path: Path, argv: list[str]
) -> None:
    fake = service()
    env = {"ORDERFLOW_DELIVER_SOCKET": str(fake.path)}
    result = run(client, argv, env)
    assert result.returncode == 75
    assert result.stdout == b"temporary failure (transport misconfigured)\n"
    assert fake.received == b""


def test_service_down_defers_with_a_short_text(client: Path, tmp_path: Path) -> None:
    config = config_for(tmp_path, tmp_path / "absent.sock")
    result = run(client, ["--config", str(config), "--sender", "a@b", "--", "x@y"])
    assert result.returncode == 75
    assert result.stdout == b"temporary failure (delivery service unavailable), try again later\n"
    assert_clean(result, tmp_path)


@pytest.mark.parametrize(
    "config_text",
    [
        None,  # --config names a file that is not there
        "DIRECTORY",  # --config names something that cannot be read as a file
        "ORDERFLOW_DELIVER_TIMEOUT=soon\n",
        "ORDERFLOW_DELIVER_TIMEOUT=-1\n",
        "ORDERFLOW_DELIVER_SOCKET=/" + "x" * 200 + "\n",  # longer than a unix socket path
        "ORDERFLOW_DELIVER_SOCKET=\n",  # empty: would be an abstract socket anyone can bind
        "ORDERFLOW_DELIVER_SOCKET=run/deliver.sock\n",  # relative: depends on the cwd
    ],
)
def test_broken_settings_defer(client: Path, tmp_path: Path, config_text: str | None) -> None:
    config = tmp_path / "ingest.env"
    if config_text == "DIRECTORY":
        config.mkdir()
    elif config_text is not None:
        config.write_text(config_text)
    result = run(client, ["--config", str(config), "--sender", "a@b", "--", "x@y"])
    assert result.returncode == 75
    assert result.stdout == b"temporary failure (transport misconfigured)\n"
    assert_clean(result, tmp_path)


def test_the_environment_wins_over_the_file_and_orderflow_config_names_it(
    client: Path, service: Any, tmp_path: Path
) -> None:
    fake = service()
    config = config_for(tmp_path, tmp_path / "absent.sock")
    env = {"ORDERFLOW_CONFIG": str(config), "ORDERFLOW_DELIVER_SOCKET": str(fake.path)}
    result = run(client, ["--sender", "a@b", "--", "x@y"], env)
    assert result.returncode == 0, result.stdout
    # Without the override the file's (absent) socket is used: the file was read.
    del env["ORDERFLOW_DELIVER_SOCKET"]
    result = run(client, ["--sender", "a@b", "--", "x@y"], env)
    assert result.returncode == 75


@pytest.mark.slow  # waits out the client's one-second deadline
def test_a_service_that_never_answers_defers_at_the_deadline(
    client: Path, service: Any, tmp_path: Path
) -> None:
    fake = service("hang")
    config = config_for(tmp_path, fake.path, timeout="1")
    started = time.monotonic()
    result = run(client, ["--config", str(config), "--sender", "a@b", "--", "x@y"], timeout=20)
    assert result.returncode == 75
    assert result.stdout == b"temporary failure (deadline), try again later\n"
    assert time.monotonic() - started < 5


def test_orderflow_ingest_deliver_runs_the_installed_client(service: Any, tmp_path: Path) -> None:
    """`orderflow-ingest deliver` execs the binary pipe(8) runs; without it, 75."""
    assert client_path().is_file(), "make venv builds it"
    fake = service()
    script = Path(sys.executable).parent / "orderflow-ingest"
    result = subprocess.run(
        [str(script), "deliver", "--sender", "a@b", "--", "x@y"],
        input=BODY,
        capture_output=True,
        env={"ORDERFLOW_DELIVER_SOCKET": str(fake.path), "PATH": os.environ["PATH"]},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    assert fake.envelope() == (("a@b", "x@y", ""), BODY)
    missing = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.prefix = sys.argv[1]; from orderflow_ingest.entry import deliver;"
         " sys.exit(deliver(['--sender', 'a@b', '--', 'x@y']))", str(tmp_path)],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert missing.returncode == 75
    assert missing.stdout == b"temporary failure (transport misconfigured)\n"


@pytest.mark.parametrize("value", ["", "relative.sock", "./deliver.sock"])
def test_empty_or_relative_deliver_socket_in_the_environment_defers(
    client: Path, value: str
) -> None:
    """Issue 10 item 12: no abstract or cwd-relative socket, whatever the source."""
    result = run(client, ["--sender", "a@b", "--", "x@y"], {"ORDERFLOW_DELIVER_SOCKET": value})
    assert result.returncode == 75
    assert result.stdout == b"temporary failure (transport misconfigured)\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as nobody")
def test_unreadable_config_file_defers_never_silent_defaults(
    client: Path, service: Any, request: pytest.FixtureRequest
) -> None:
    """Issue 10 item 12: a --config (or $ORDERFLOW_CONFIG) the pipe user cannot read is 75,
    even when the defaults would have worked (here: the socket from the environment)."""
    fake = service()
    # pytest's tmp_path is under a 0700 directory: nobody needs a path it can traverse.
    shared = Path(tempfile.mkdtemp(prefix="orderflow-client-", dir="/tmp"))
    shared.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    client = Path(shutil.copy2(client, shared / "orderflow-deliver"))
    config = config_for(shared, fake.path)
    config.chmod(0o600)  # root's; the client runs as nobody
    env = {"ORDERFLOW_DELIVER_SOCKET": str(fake.path)}

    def as_nobody(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(client), *args],
            input=BODY,
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
            user="nobody",
            group="nogroup",
        )

    for args, environment in (
        (["--config", str(config), "--sender", "a@b", "--", "x@y"], env),
        (["--sender", "a@b", "--", "x@y"], {**env, "ORDERFLOW_CONFIG": str(config)}),
        (["--config", "", "--sender", "a@b", "--", "x@y"], env),
    ):
        result = as_nobody(args, environment)
        assert result.returncode == 75, args
        assert result.stdout == b"temporary failure (transport misconfigured)\n"
    assert fake.received == b""


@pytest.mark.slow  # waits out the client's one-second deadline
def test_input_cut_off_by_a_deadline_sends_no_trailer(
    client: Path, service: Any, tmp_path: Path
) -> None:
    """Issue 10 item 1: a client whose deadline fires mid-message leaves a stream the service
    cannot mistake for a complete message (no trailer), however much of it arrived."""
    fake = service()
    config = config_for(tmp_path, fake.path, timeout="1")
    reader, writer = os.pipe()
    with subprocess.Popen(
        [str(client), "--config", str(config), "--sender", "a@b", "--", "x@y"],
        stdin=reader,
        stdout=subprocess.PIPE,
        env={},
    ) as process:
        os.close(reader)
        os.write(writer, BODY)  # part of a message; the rest never comes
        stdout, _ = process.communicate(timeout=20)
    os.close(writer)
    assert process.returncode == 75
    assert stdout == b"temporary failure (deadline), try again later\n"
    fake.thread.join(timeout=10)
    assert BODY in fake.received
    with pytest.raises(WireError, match="without a trailer"):
        decode(fake.received, 10**9)
