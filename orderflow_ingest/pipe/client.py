"""`orderflow-ingest deliver`: what pipe(8) runs once per message and recipient.

It only hands the message to the long-running delivery service over a unix socket and relays
the answer as an exit status, so each delivery costs a few milliseconds of CPU rather than the
~350 ms that importing boto3 and psycopg would. Standard library only, on purpose.

pipe(8) runs this file directly as ``python3 -E -s -S .../orderflow_ingest/pipe/client.py``:
skipping site initialisation saves ~5 ms of CPU a message; ``orderflow-ingest deliver`` is the
same program for people and tests.

pipe(8) bounces on any status but 0, 71 and 75, and puts whatever we print into the bounce a
possibly forged sender receives: so every failure here is caught and reported as 75 with a
short fixed text, never a traceback, path or secret.
"""

from __future__ import annotations

import _signal  # the C modules: `signal` and `socket` would import enum, at ~3 ms a message
import _socket
import os
import sys
import time

# Only the standard library at module level: anything that can fail to import is imported
# inside main()'s try, so even a broken installation answers 75 and never a traceback.
TYPE_CHECKING = False  # typing costs ~2 ms to import; annotations are for mypy only
if TYPE_CHECKING:
    from typing import NoReturn

EX_TEMPFAIL = 75


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> dict[str, str | None]:
    """--config, --sender, --queue-id, then `--` and exactly one recipient.

    Hand-rolled rather than argparse: cheaper to import, and after `--` nothing is an option,
    so a recipient starting with `-` is never read as one.
    """
    options: dict[str, str | None] = {"config": None, "sender": None, "queue_id": None}
    names = {"--config": "config", "--sender": "sender", "--queue-id": "queue_id"}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest = argv[index + 1 :]
            if len(rest) != 1:
                raise UsageError("exactly one recipient after --")
            options["recipient"] = rest[0]
            if options["sender"] is None:
                raise UsageError("--sender is required (use '' for the null sender)")
            return options
        if arg in names and index + 1 < len(argv):
            options[names[arg]] = argv[index + 1]
            index += 2
            continue
        raise UsageError(f"unexpected argument at position {index + 1}")
    raise UsageError("missing -- RECIPIENT")


def finish(status: int, text: str) -> NoReturn:
    """Print the short reason pipe(8) logs (and, for a bounce, quotes) and exit."""
    if text:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    os._exit(status)


def _on_deadline(signum: int, frame: object) -> None:
    finish(EX_TEMPFAIL, "temporary failure (deadline), try again later")


def hand_over(socket_path: str, envelope: bytes, deadline: float, chunk_size: int) -> bytes:
    """Stream stdin to the service and return its one-line answer."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    conn.settimeout(max(0.1, deadline - time.monotonic()))
    conn.connect(socket_path)
    conn.sendall(envelope)
    stdin = sys.stdin.buffer.fileno()
    while True:
        chunk = os.read(stdin, chunk_size)
        if not chunk:
            break
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        conn.sendall(chunk)
    conn.shutdown(_socket.SHUT_WR)
    reply = b""
    while not reply.endswith(b"\n"):
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        data = conn.recv(4096)
        if not data:
            break
        reply += data
    conn.close()
    return reply


def main(argv: list[str]) -> NoReturn:
    try:
        options = parse_args(argv)
    except UsageError:
        # A usage error is our configuration's fault, not the sender's: defer, never bounce.
        finish(EX_TEMPFAIL, "temporary failure (transport misconfigured)")
    try:
        from orderflow_ingest.pipe.protocol import CHUNK, format_envelope, parse_reply
        from orderflow_ingest.settings import load_settings

        settings = load_settings(
            options["config"], only=("ORDERFLOW_DELIVER_SOCKET", "ORDERFLOW_DELIVER_TIMEOUT")
        )
        timeout = float(settings.deliver_timeout)
        deadline = time.monotonic() + timeout
        _signal.signal(_signal.SIGALRM, _on_deadline)
        _signal.alarm(max(1, int(timeout) + 1))
        envelope = format_envelope(
            options["sender"] or "", options["recipient"] or "", options["queue_id"] or ""
        )
        reply = hand_over(settings.deliver_socket, envelope, deadline, CHUNK)
    except BaseException:
        finish(EX_TEMPFAIL, "temporary failure (delivery service unavailable), try again later")
    status, text = parse_reply(reply)
    if status not in (0, 67, 75):
        status, text = EX_TEMPFAIL, "temporary failure, try again later"
    finish(status, text if status else "")


if __name__ == "__main__":
    # Run as a file with -S: make the package root (two levels above this file's directory)
    # importable; string operations only, os.path would cost another module.
    sys.path[0] = sys.path[0].rsplit("/", 2)[0]
    main(sys.argv[1:])
