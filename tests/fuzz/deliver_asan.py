"""deliver.c under AddressSanitizer and UndefinedBehaviorSanitizer, driven with hostile input.

    python tests/fuzz/deliver_asan.py [--seconds N | --cases N] [--seed S]

Compiles orderflow_ingest/pipe/deliver.c (the file in the checkout, nothing installed) into a
temporary directory with -fsanitize=address,undefined, then runs it over and over with random
hostile arguments, settings files, standard input (empty, binary, chunk-sized, cut off) and a
fake delivery service on a unix socket that answers garbled, cut, overlong or no replies, or
hangs up mid-message. For every run it checks what pipe(8) relies on:

- no sanitizer report, no signal: the client only ever exits 0, 67 or 75;
- what it prints (pipe(8) quotes it to a possibly forged sender) is one short line of
  printable ASCII and never a path from its settings;
- a run that got "0 ..." from the service sent the message whole: the bytes the service
  received decode (pipe/protocol.py) to exactly the standard input;
- it ends within its deadline.

Deterministic for a given --seed and --cases (tests/test_fuzz_short.py); `make fuzz` runs it
for --seconds. Exit status 1 and the failing case printed when anything breaks.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "orderflow_ingest" / "pipe" / "deliver.c"
sys.path.insert(0, str(ROOT))

from orderflow_ingest.pipe import protocol  # noqa: E402
from orderflow_ingest.pipe.build import defines  # noqa: E402

SANITIZER_EXIT = 99
ALLOWED_EXITS = {0, 67, 75}
CLIENT_TIMEOUT = 3  # seconds: ORDERFLOW_DELIVER_TIMEOUT for the runs that reach the service


def build(directory: Path) -> Path:
    """The client with ASan and UBSan, every finding fatal."""
    compiler = shutil.which("clang") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit("no C compiler on PATH")
    output = directory / "deliver-asan"
    subprocess.run(
        [
            compiler,
            "-O1",
            "-g",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
            "-Wall",
            *defines(),  # the constants deliver.c shares with the Python side
            "-o",
            str(output),
            str(SOURCE),
        ],
        check=True,
    )
    return output


# --- the fake delivery service -------------------------------------------------------------


REPLIES: list[bytes | None] = [
    b"0 stored\n",
    b"75 temporary failure\n",
    b"67 unknown user\n",
    b"0\n",
    b"",  # hang up without a word
    None,  # hang up before reading anything
    b"0 stored",  # no newline
    b"garbage\n",
    b"12345678901234567890 overflow\n",
    b"-1 negative\n",
    b" 0 leading space\n",
    b"0 \x1b[31mred\x07 \xff\xfe\n",
    b"0" + b"9" * 5000 + b"\n",
    b"0 " + b"A" * 10000 + b"\n",  # longer than MAX_REPLY
    b"\n",
    b"\x00\x00\x00\n",
    b"0 ok\nsecond line\n",
    b"99 odd status\n",
    b"075 leading zero\n",
]


@dataclass
class Session:
    received: bytes = b""
    reply: bytes | None = b""


@dataclass
class FakeService:
    """Accepts one connection at a time; the next reply is set per case."""

    path: str
    reply: bytes | None = b"0 stored\n"
    read_first: bool = True
    sessions: list[Session] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            with connection:
                session = Session(reply=self.reply)
                self.sessions.append(session)
                connection.settimeout(CLIENT_TIMEOUT + 2)
                try:
                    if session.reply is None:
                        continue
                    if not self.read_first:
                        connection.sendall(session.reply)
                    chunks = []
                    while True:
                        data = connection.recv(65536)
                        if not data:
                            break
                        chunks.append(data)
                    session.received = b"".join(chunks)
                    if self.read_first:
                        connection.sendall(session.reply)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.server.close()


# --- hostile inputs --------------------------------------------------------------------------


def hostile_string(rng: random.Random) -> str:
    return rng.choice(
        [
            "",
            "-",
            "--",
            "--sender",
            "a" * rng.choice([1, 255, 4096, 70000]),
            "ü\u202e\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
            "%s%n%x",
            "buyer@customer.example",
            "\x1b[2J",
        ]
    )


def hostile_settings(rng: random.Random, socket_path: str) -> str:
    lines = []
    for _ in range(rng.randint(0, 6)):
        key = rng.choice(["ORDERFLOW_DELIVER_SOCKET", "ORDERFLOW_DELIVER_TIMEOUT", "OTHER", ""])
        value = rng.choice(
            [
                socket_path,
                f'"{socket_path}"',
                f"'{socket_path}",
                "",
                '"',
                "relative.sock",
                "/" + "x" * 200,
                "nan",
                "inf",
                "-1",
                "0",
                "1e309",
                "0x10",
                " 5",
                "86401",
                "1e-9",
                str(CLIENT_TIMEOUT),
            ]
        )
        prefix = rng.choice(["", "export ", "  export\t", "#", " "])
        equals = rng.choice(["=", " = ", "==", ""])
        lines.append(f"{prefix}{key}{equals}{value}")
    if rng.random() < 0.1:
        lines.append("X=" + "y" * 200000)
    text = "\n".join(lines)
    if rng.random() < 0.2:
        text += "\x00garbage\xff"
    return text


def good_settings(socket_path: str) -> str:
    return (
        f"export ORDERFLOW_DELIVER_SOCKET={socket_path}\n"
        f"ORDERFLOW_DELIVER_TIMEOUT={CLIENT_TIMEOUT}\n"
    )


def hostile_stdin(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 100, 65535, 65536, 65537, 200000])
    kind = rng.random()
    if kind < 0.3:
        return rng.randbytes(size)
    if kind < 0.6:
        return (b"Subject: x\r\n\r\n" + b"0 " + b"a" * 64 + b" 12\n" * (size // 70 + 1))[:size]
    return b"\n" * size


@dataclass
class Case:
    argv: list[str]
    settings: str | None
    stdin: bytes
    reply: bytes | None
    read_first: bool
    env: dict[str, str]
    expect_service: bool


def make_case(rng: random.Random, socket_path: str, config: Path) -> Case:
    reply = rng.choice(REPLIES)
    read_first = rng.random() < 0.85
    stdin = hostile_stdin(rng)
    env: dict[str, str] = {}
    if rng.random() < 0.6:  # well-formed call, hostile service and input
        argv = ["--config", str(config), "--sender", rng.choice(["", "buyer@x.example"])]
        argv += ["--queue-id", "4QX1", "--", rng.choice(["orders@acme.example", "-x"])]
        return Case(argv, good_settings(socket_path), stdin, reply, read_first, env, True)
    argv = [hostile_string(rng) for _ in range(rng.randint(0, 7))]
    if rng.random() < 0.5:
        argv = ["--config", str(config), "--sender", hostile_string(rng), *argv[:2]]
        argv += ["--", hostile_string(rng)]
    settings = hostile_settings(rng, socket_path) if rng.random() < 0.8 else None
    if rng.random() < 0.3:
        env["ORDERFLOW_DELIVER_SOCKET"] = rng.choice(["", "rel", socket_path, "/nonexistent"])
    if rng.random() < 0.2:
        env["ORDERFLOW_CONFIG"] = rng.choice(["", "/nonexistent", "/", str(config)])
    return Case(argv, settings, stdin, reply, read_first, env, False)


# --- running and judging --------------------------------------------------------------------


def run_case(client: Path, case: Case, service: FakeService, config: Path) -> list[str]:
    """The invariants this run broke (empty: all held)."""
    if case.settings is None:
        config.unlink(missing_ok=True)
    else:
        config.write_bytes(case.settings.encode("utf-8", "surrogateescape"))
    service.reply, service.read_first = case.reply, case.read_first
    before = len(service.sessions)
    env = {
        "PATH": "/usr/bin:/bin",
        "ASAN_OPTIONS": f"detect_leaks=0:exitcode={SANITIZER_EXIT}:abort_on_error=0",
        "UBSAN_OPTIONS": f"halt_on_error=1:exitcode={SANITIZER_EXIT}:print_stacktrace=1",
        **case.env,
    }
    argv = [arg.encode("utf-8", "surrogateescape") for arg in case.argv]
    started = time.monotonic()
    try:
        run = subprocess.run(
            [str(client).encode(), *argv],
            input=case.stdin,
            capture_output=True,
            env=env,
            timeout=CLIENT_TIMEOUT + 20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ["did not end within its deadline"]
    except OSError as error:  # E2BIG and the like: the kernel refused the argv, not our bug
        return [] if error.errno == 7 else [f"could not start: {error}"]
    elapsed = time.monotonic() - started
    problems = []
    stderr = run.stderr.decode("utf-8", "replace")
    if "Sanitizer" in stderr or "runtime error" in stderr or run.returncode == SANITIZER_EXIT:
        problems.append("sanitizer report:\n" + stderr[-4000:])
    if run.returncode not in ALLOWED_EXITS:
        problems.append(f"exit status {run.returncode} (pipe(8) would bounce)")
    out = run.stdout
    if (
        len(out) > 300
        or out.count(b"\n") > 1
        or any(b not in range(32, 127) for b in out.rstrip(b"\n"))
    ):
        problems.append(f"stdout not one short printable line: {out[:200]!r}")
    for secret in (str(config), service.path):
        if secret.encode() in out:
            problems.append("a settings path in what pipe(8) would quote")
    if elapsed > CLIENT_TIMEOUT + 10:
        problems.append(f"took {elapsed:.1f}s, deadline {CLIENT_TIMEOUT}s")
    sessions = service.sessions[before:]
    if run.returncode == 0:
        if not sessions or case.reply is None or not case.reply.startswith(b"0"):
            problems.append("exit 0 without the service saying 0")
        elif case.read_first:
            try:
                _envelope, message = protocol.decode(sessions[-1].received, 1 << 30)
            except ValueError as error:
                problems.append(f"exit 0 but the service got no complete message: {error}")
            else:
                if message != case.stdin:
                    problems.append("exit 0 but the message arrived changed")
    return problems


_PARENT = """
import os, subprocess, sys
client, sock, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
env = {"ORDERFLOW_DELIVER_SOCKET": sock, "ORDERFLOW_DELIVER_TIMEOUT": "%d",
       "ASAN_OPTIONS": "detect_leaks=0:exitcode=%d", "UBSAN_OPTIONS": "halt_on_error=1",
       "ORDERFLOW_CONFIG": "/dev/null"}
child = subprocess.Popen([client, "--sender", "a@b.example", "--", "orders@acme.example"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
child.stdin.write(sys.stdin.buffer.read()[:cut])
child.stdin.flush()
print(child.pid, flush=True)
os.kill(os.getpid(), 9)  # pipe(8) killed mid-message: the client's input ends early
"""


def _ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


def run_parent_killed(client: Path, service: FakeService, rng: random.Random) -> list[str]:
    """pipe(8) dies mid-message: whatever the client does, the service must not get a
    complete message (a trailer), or the prefix would be stored as the whole order."""
    message = rng.randbytes(rng.choice([10, 70000, 300000]))
    cut = rng.randrange(1, len(message))
    service.reply, service.read_first = b"0 stored\n", True
    before = len(service.sessions)
    script = _PARENT % (CLIENT_TIMEOUT, SANITIZER_EXIT)
    run = subprocess.run(
        [sys.executable, "-c", script, str(client), service.path, str(cut)],
        input=message,
        capture_output=True,
        timeout=30,
        check=False,
    )
    pid = int(run.stdout.split()[0]) if run.stdout.split() else 0
    deadline = time.monotonic() + CLIENT_TIMEOUT + 10
    while pid and time.monotonic() < deadline:  # the orphan ends on its own (reparented)
        if _ended(pid):
            break
        time.sleep(0.05)
    else:
        if pid:
            return ["the orphaned client outlived its deadline"]
    for session in service.sessions[before:]:
        try:
            protocol.decode(session.received, 1 << 30)
        except ValueError:
            continue
        return [f"a message cut at {cut} of {len(message)} bytes arrived as complete"]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--mode",
        choices=("all", "hostile", "parent-killed"),
        default="all",
        help="hostile arguments/settings/replies, pipe(8) killed mid-message, or both",
    )
    args = parser.parse_args()
    if args.seconds is None and args.cases is None:
        args.cases = 200
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="deliver-asan-"))
    service = None
    try:
        client = build(work)
        socket_path = str(work / "deliver.sock")
        config = work / "ingest.env"
        service = FakeService(socket_path)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        count = 0
        clean_stores = 0
        killed = 0
        started = time.monotonic()
        while (args.cases is None or count < args.cases) and (
            deadline is None or time.monotonic() < deadline
        ):
            count += 1
            if args.mode == "parent-killed" or (args.mode == "all" and count % 10 == 0):
                killed += 1
                problems = run_parent_killed(client, service, rng)
                if problems:
                    print(f"deliver.c parent-killed case {count} (seed {args.seed}):", *problems)
                    return 1
                continue
            case = make_case(rng, socket_path, config)
            problems = run_case(client, case, service, config)
            if case.expect_service and case.reply == b"0 stored\n" and case.read_first:
                clean_stores += 1
            if problems:
                print(f"deliver.c case {count} (seed {args.seed}) broke:", *problems, sep="\n  ")
                shown = {**case.__dict__, "stdin": f"{len(case.stdin)} bytes"}
                print(f"  case: {shown!r:.2000}")
                return 1
        elapsed = time.monotonic() - started
        print(
            f"deliver.c ASan/UBSan: {count} runs in {elapsed:.0f}s "
            f"({count / max(elapsed, 0.001):.1f}/s), {clean_stores} clean deliveries verified, "
            f"{len(service.sessions)} reached the service, {killed} with pipe(8) killed mid-message"
        )
        return 0
    finally:
        if service is not None:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
