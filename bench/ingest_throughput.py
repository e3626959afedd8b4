"""Ingest throughput: Postfix's smtp-source drives the stack's Postfix, and we time how fast
10 KB messages are delivered through three transports in the same run and on the same Postfix:

  discard:      Postfix alone (the ceiling)
  /bin/cat      a pipe(8) transport running a trivial command (the cost of pipe(8) itself)
  orderflow     our transport: deliver → delivery service → PostgreSQL + S3 + Redis (to STORED)

Each figure is messages / seconds from the first connection until the last message left the
queue (and, for orderflow, until every row is STORED). It also measures the CPU that the process
Postfix starts per message costs (`deliver`, target ≤ 20 ms), from the children's rusage.

Run by hand (root, Debian packages installed): `make bench` or
  .venv/bin/python bench/ingest_throughput.py --messages 2000 --sessions 20
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from orderflow_ingest.db import connect
from orderflow_ingest.devstack.stack import Stack, StackOptions
from orderflow_ingest.pipe.build import client_path

POSTCONF = "/usr/sbin/postconf"
POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"
DOMAIN = "orderflow.test"
BASELINES = {"discard": "discard.bench", "cat": "cat.bench"}


def add_baseline_transports(stack: Stack, pipe_concurrency: int) -> None:
    """discard.bench → discard:, cat.bench → a pipe running /bin/cat, beside our domain."""
    config_dir = str(stack.postfix_config_dir.resolve())
    transport = stack.postfix_config_dir / "orderflow_transport"
    with transport.open("a") as handle:
        handle.write("discard.bench discard:\ncat.bench benchcat:\n")
    settings = [
        f"relay_domains = {DOMAIN}, discard.bench, cat.bench",
        "benchcat_destination_recipient_limit = 1",
    ]
    for setting in settings:
        subprocess.run([POSTCONF, "-c", config_dir, "-e", setting], check=True)
    service = (
        f"benchcat/unix=benchcat unix - n n - {pipe_concurrency} pipe"
        f" flags=RX user={stack.options.service_user} argv=/bin/cat"
    )
    subprocess.run([POSTCONF, "-c", config_dir, "-M", service], check=True)
    subprocess.run([POSTFIX, "-c", config_dir, "reload"], check=True, capture_output=True)
    time.sleep(1)


def stored_rows(conn: Any, sender: str) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM inbound_message"
        " WHERE envelope_sender = %s AND status = 'STORED'",
        (sender,),
    ).fetchone()
    return int(row["n"]) if row else 0


def queue_empty(stack: Stack) -> bool:
    return not stack.postqueue()


# How often the drain is checked. Each check runs `postqueue -j` (a process) and a query, on
# the same 2 cores as what is measured: 5 times a second costs well under 1% of a core.
POLL_SECONDS = 0.2


def run_load(
    stack: Stack, recipient: str, messages: int, sessions: int, size: int, rows: bool
) -> float:
    """Seconds from the first SMTP connection until all messages are delivered."""
    sender = f"bench-{uuid.uuid4().hex[:10]}@sender.example"
    started = time.monotonic()
    subprocess.run(
        [
            SMTP_SOURCE,
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            sender,
            "-t",
            recipient,
            "-M",
            "client.sender.example",
            f"{stack.smtp_host}:{stack.smtp_port}",
        ],
        check=True,
    )
    accepted = time.monotonic()
    deadline = accepted + 600
    with connect(stack.settings.database_url) as conn:
        conn.autocommit = True  # each count sees the latest commits
        while time.monotonic() < deadline:
            if queue_empty(stack) and (not rows or stored_rows(conn, sender) >= messages):
                break
            time.sleep(POLL_SECONDS)
        else:
            raise SystemExit(f"bench: {recipient}: not drained after 600 s")
        finished = time.monotonic()
        count = stored_rows(conn, sender) if rows else messages
    if count != messages:
        raise SystemExit(f"bench: expected {messages} STORED rows, found {count}")
    print(
        f"  {recipient:32} accepted in {accepted - started:6.2f}s,"
        f" delivered in {finished - started:6.2f}s",
        file=sys.stderr,
    )
    return finished - started


def deliver_cpu_per_message(stack: Stack, count: int, size: int) -> float:
    """CPU seconds (user + system) of one `deliver` process, averaged over `count` runs: the
    compiled client itself, as pipe(8) runs it (not the `orderflow-ingest deliver` wrapper)."""
    body = ("x" * 76 + "\r\n") * (size // 78)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for index in range(count):
        message = (
            f"From: a@sender.example\r\nTo: orders+acme@{DOMAIN}\r\nSubject: cpu {index}\r\n"
            f"Message-ID: <cpu-{uuid.uuid4().hex}@sender.example>\r\n\r\n{body}"
        ).encode()
        subprocess.run(
            [
                str(client_path()),
                "--config",
                str(stack.config_path),
                "--sender",
                "a@sender.example",
                "--queue-id",
                "BENCH",
                "--",
                f"orders+acme@{DOMAIN}",
            ],
            input=message,
            check=True,
            stdout=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240, help="message body bytes")
    parser.add_argument(
        "--pipe-concurrency", type=int, default=8, help="as the Ansible role ships it"
    )
    parser.add_argument("--deliver-workers", type=int, default=8)
    parser.add_argument("--cpu-samples", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts its own Postfix instance)")

    base = Path(tempfile.mkdtemp(prefix="orderflow-bench-", dir="/tmp"))
    base.chmod(0o755)
    options = StackOptions(
        ingest_domain=DOMAIN,
        pipe_concurrency=args.pipe_concurrency,
        extra_settings={"ORDERFLOW_DELIVER_WORKERS": str(args.deliver_workers)},
    )
    stack = Stack(base, options)
    try:
        stack.up()
        add_baseline_transports(stack, args.pipe_concurrency)
        print(
            f"{args.messages} messages of {args.size} bytes, {args.sessions} SMTP sessions,"
            f" pipe concurrency {args.pipe_concurrency}, {os.cpu_count()} CPUs",
            file=sys.stderr,
        )
        # Warm-up so every path has its processes and connections.
        for target in ("discard.bench", "cat.bench", DOMAIN):
            run_load(stack, f"orders+acme@{target}", 50, 5, args.size, rows=target == DOMAIN)
        results: dict[str, float] = {}
        for name, target in [
            ("discard:", "discard.bench"),
            ("/bin/cat pipe", "cat.bench"),
            ("orderflow (to STORED)", DOMAIN),
        ]:
            seconds = run_load(
                stack,
                f"orders+acme@{target}",
                args.messages,
                args.sessions,
                args.size,
                rows=target == DOMAIN,
            )
            results[name] = args.messages / seconds
        cpu = deliver_cpu_per_message(stack, args.cpu_samples, args.size)
    finally:
        stack.down()
        shutil.rmtree(base, ignore_errors=True)

    ceiling = results["discard:"]
    print(f"\n{'transport':24} {'msg/s':>8} {'vs discard:':>12}")
    for name, rate in results.items():
        print(f"{name:24} {rate:8.1f} {rate / ceiling:11.0%}")
    print(f"\ndeliver process CPU per message: {cpu * 1000:.1f} ms (target <= 20 ms)")
    ratio = results["orderflow (to STORED)"] / results["/bin/cat pipe"]
    print(f"orderflow vs /bin/cat pipe: {ratio:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
