"""Drain rate against the spec's own design: ours (Postfix + milter + pipe + delivery service)
beside the peer (bench/peer_smtpd.py: aiosmtpd storing before 250), each on a fresh devstack
stack, alternating, over several rounds, with the same smtp-source load.

  acceptance  messages / seconds from the first connection until the last 250
  drain       messages / seconds from the first connection until every row is STORED
  floor       ours with a pipe(8) transport running /bin/cat instead of `deliver` (same stack,
              same milter): what Postfix + milter + pipe(8) alone cost

Ratios are of the medians of the rounds. Over each run it also reads the CPU every process
used (from /proc, reaped children included), so the table says where the CPU goes, per
message. `--profile` runs our delivery service with DELIVER_SERVICE_PROFILE (cProfile per
delivery thread) and prints its hot spots.

Run by hand (root, Debian's postfix installed): `make bench` or
  .venv/bin/python bench/drain_vs_peer.py --messages 2000 --sessions 20 --rounds 3
The machine's other load disturbs absolute figures; the sides alternate within one run, so
compare within a run.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dns_server import LoopbackDns
from ingest_throughput import add_baseline_transports, stored_rows

from orderflow_ingest.db import connect
from orderflow_ingest.devstack.component import venv_bin
from orderflow_ingest.devstack.processes import spawn, terminate
from orderflow_ingest.devstack.services import service_env
from orderflow_ingest.devstack.stack import Stack, StackOptions

SMTP_SOURCE = "/usr/sbin/smtp-source"
DOMAIN = "orderflow.test"
RECIPIENT = f"orders+acme@{DOMAIN}"
SENDER_DOMAIN = "sender.example"
POLL_SECONDS = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")
PEER = Path(__file__).resolve().parent / "peer_smtpd.py"


# --- CPU accounting -------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, list[int]] | None:
    """(comm, ppid, [utime, stime, cutime, cstime]) in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return comm, int(fields[1]), [int(value) for value in fields[11:15]]


def process_table() -> dict[int, tuple[str, int, list[int]]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def cpu_by_group(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree: every live process's own CPU plus what
    its reaped children used (a child that exits moves from one term to its parent's: the
    sum stays right). Postfix's tree is one group: smtpd, cleanup and pipe processes come and
    go (max_idle), so a split by program would move CPU between programs as they exit; the
    `deliver` clients are pipe's children and count in it."""
    table = process_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (_, ppid, _) in table.items():
        children[ppid].append(pid)
    totals: dict[str, float] = defaultdict(float)
    for name, root in roots.items():
        todo = [root]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            if pid not in table:
                continue
            _, _, (utime, stime, cutime, cstime) = table[pid]
            totals[name] += (utime + stime + cutime + cstime) / CLK_TCK
    return dict(totals)


def stack_roots(stack: Stack) -> dict[str, int]:
    roots = {}
    master = stack.postfix.queue_dir / "pid" / "master.pid"
    roots["postfix + deliver clients"] = int(master.read_text().split()[0])
    for name in ("milter", "deliver", "postgres", "redis", "s3"):
        ref = stack.ctx.ref(name)
        if ref is not None and ref.alive():
            roots[name if name != "deliver" else "delivery service"] = ref.pid
    return roots


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}


# --- stacks and loads ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def new_stack(args: argparse.Namespace, dns: LoopbackDns, ours: bool) -> Stack:
    base = Path(tempfile.mkdtemp(prefix="orderflow-bench-peer-", dir="/tmp"))
    base.chmod(0o755)
    options = StackOptions(
        ingest_domain=DOMAIN,
        milter=ours,
        deliver=ours,
        pipe_concurrency=args.pipe_concurrency,
        extra_settings={
            "ORDERFLOW_DELIVER_WORKERS": str(args.deliver_workers),
            "ORDERFLOW_DNS_SERVERS": dns.server,
            "ORDERFLOW_DNS_TIMEOUT": "2",
        },
    )
    stack = Stack(base, options).up()
    try:
        if ours:
            add_baseline_transports(stack, args.pipe_concurrency)
            if args.profile:
                profile_delivery_service(stack)
    except BaseException:
        stack.down()
        shutil.rmtree(base, ignore_errors=True)
        raise
    return stack


def profile_delivery_service(stack: Stack) -> None:
    """Run the stack's delivery service again with DELIVER_SERVICE_PROFILE set."""
    stack.stop_component("deliver")
    path = stack.ctx.layout.run / "deliver.prof"
    popen, ref = spawn(
        [str(venv_bin("orderflow-ingest")), "deliver-service", "--config", str(stack.config_path)],
        stack.ctx.layout.log("deliver"),
        {**service_env(), "DELIVER_SERVICE_PROFILE": str(path)},
        stack.ctx.layout.run,
        user=stack.options.service_user,
    )
    stack.ctx.record("deliver", ref, popen)
    deadline = time.monotonic() + 30
    while not stack.deliver.ready():
        if time.monotonic() > deadline:
            raise SystemExit("bench: the profiled delivery service did not start")
        time.sleep(0.05)


def run_load(
    stack: Stack,
    host: str,
    port: int,
    recipient: str,
    args: argparse.Namespace,
    messages: int,
    rows: bool,
    roots: dict[str, int],
) -> dict[str, Any]:
    """One load: seconds to the last 250 and to the last STORED row (or empty queue), and
    the CPU each process tree used meanwhile."""
    sender = f"bench-{uuid.uuid4().hex[:10]}@{SENDER_DOMAIN}"
    cpu_before = cpu_by_group(roots)
    started = time.monotonic()
    subprocess.run(
        [
            SMTP_SOURCE,
            "-s", str(args.sessions),
            "-m", str(messages),
            "-l", str(args.size),
            "-f", sender,
            "-t", recipient,
            "-M", f"client.{SENDER_DOMAIN}",
            f"{host}:{port}",
        ],
        check=True,
    )  # fmt: skip
    accepted = time.monotonic()
    deadline = accepted + 600
    with connect(stack.settings.database_url) as conn:
        conn.autocommit = True  # each count sees the latest commits
        while time.monotonic() < deadline:
            queue_empty = not stack.postqueue()
            if queue_empty and (not rows or stored_rows(conn, sender) >= messages):
                break
            time.sleep(POLL_SECONDS)
        else:
            raise SystemExit(f"bench: {recipient}: not drained after 600 s")
        drained = time.monotonic()
        count = stored_rows(conn, sender) if rows else messages
    if count != messages:
        raise SystemExit(f"bench: expected {messages} STORED rows, found {count}")
    cpu = cpu_delta(cpu_before, cpu_by_group(roots))
    return {"accepted": accepted - started, "drained": drained - started, "cpu": cpu}


def run_ours(args: argparse.Namespace, dns: LoopbackDns) -> dict[str, dict[str, Any]]:
    stack = new_stack(args, dns, ours=True)
    try:
        roots = stack_roots(stack)
        host, port = stack.smtp_host, stack.smtp_port
        for target in ("cat.bench", DOMAIN):  # warm-up: processes, connections, caches
            run_load(stack, host, port, f"orders+acme@{target}", args, 50, target == DOMAIN, roots)
        floor = run_load(
            stack, host, port, "orders+acme@cat.bench", args, args.messages, False, roots
        )
        ours = run_load(stack, host, port, RECIPIENT, args, args.messages, True, roots)
        if args.profile:
            stack.stop_component("deliver")  # the service writes its profile as it stops
            print_profile(stack.ctx.layout.run / "deliver.prof", args.profile_lines)
    finally:
        stack.down()
        shutil.rmtree(stack.base_dir, ignore_errors=True)
    return {"/bin/cat pipe": floor, "orderflow": ours}


def run_peer(args: argparse.Namespace, dns: LoopbackDns) -> dict[str, dict[str, Any]]:
    stack = new_stack(args, dns, ours=False)
    port = free_port()
    log = stack.base_dir / "peer.log"
    popen = ref = None
    try:
        popen, ref = spawn(
            [
                sys.executable, str(PEER), "--config", str(stack.config_path),
                "--port", str(port), "--workers", str(args.deliver_workers),
            ],
            log,
            {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            stack.base_dir,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: the peer did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        roots = {**stack_roots(stack), "peer (aiosmtpd)": popen.pid}
        roots.pop("postfix + deliver clients")  # idle on the peer's stack
        run_load(stack, "127.0.0.1", port, RECIPIENT, args, 50, True, roots)
        peer = run_load(stack, "127.0.0.1", port, RECIPIENT, args, args.messages, True, roots)
    finally:
        if ref is not None:
            terminate(ref, 15, popen)
        stack.down()
        shutil.rmtree(stack.base_dir, ignore_errors=True)
    return {"peer": peer}


def print_profile(path: Path, lines: int) -> None:
    if not path.exists():
        print(f"bench: no profile at {path}", file=sys.stderr)
        return
    print("\ndelivery service profile (cProfile of every delivery thread, cumulative):")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(lines)
    print("delivery service profile (own time):")
    stats.sort_stats("tottime").print_stats(lines)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240, help="message body bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pipe-concurrency", type=int, default=8, help="as Ansible ships it")
    parser.add_argument("--deliver-workers", type=int, default=8, help="ours and the peer's")
    parser.add_argument(
        "--only", choices=("ours", "peer"), help="one side only (quick experiments)"
    )
    parser.add_argument("--profile", action="store_true", help="profile the delivery service")
    parser.add_argument("--profile-lines", type=int, default=35)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts its own Postfix instances)")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))

    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with LoopbackDns() as dns:
        dns.txt(SENDER_DOMAIN, "v=spf1 ip4:127.0.0.1 -all")
        dns.txt(f"_dmarc.{SENDER_DOMAIN}", "v=DMARC1; p=none")
        for round_number in range(args.rounds):
            sides = [run_ours, run_peer] if round_number % 2 == 0 else [run_peer, run_ours]
            if args.only:
                sides = [run_ours if args.only == "ours" else run_peer]
            for side in sides:
                for name, result in side(args, dns).items():
                    runs[name].append(result)
                    print(
                        f"  round {round_number + 1} {name:14} accepted"
                        f" {args.messages / result['accepted']:7.1f} msg/s, drained"
                        f" {args.messages / result['drained']:7.1f} msg/s",
                        file=sys.stderr,
                    )

    print(
        f"\n{args.messages} messages x {args.size} bytes, {args.sessions} SMTP sessions,"
        f" {args.rounds} rounds, pipe concurrency {args.pipe_concurrency},"
        f" {args.deliver_workers} service/peer threads, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"\n{'side':16} {'accept msg/s':>13} {'drain msg/s':>12}   (median; each round)")
    accept: dict[str, float] = {}
    drain: dict[str, float] = {}
    names = [name for name in ("orderflow", "/bin/cat pipe", "peer") if runs[name]]
    for name in names:
        accepts = [args.messages / run["accepted"] for run in runs[name]]
        drains = [args.messages / run["drained"] for run in runs[name]]
        accept[name], drain[name] = median(accepts), median(drains)
        each = ", ".join(f"{value:.0f}" for value in drains)
        print(f"{name:16} {accept[name]:13.1f} {drain[name]:12.1f}   ({each})")
    if len(names) == 3:
        print(
            f"\nacceptance vs peer: {accept['orderflow'] / accept['peer']:.2f}x"
            f"\ndrain vs peer:      {drain['orderflow'] / drain['peer']:.2f}x (target >= 1.0x)"
            f"\ndrain vs /bin/cat pipe: {drain['orderflow'] / drain['/bin/cat pipe']:.0%}"
        )
    print("\nCPU per message, ms (median of rounds), over each run from first connection to drain")
    groups = sorted({group for name in runs for run in runs[name] for group in run["cpu"]})
    print(f"{'process':28}" + "".join(f"{name:>15}" for name in names))
    totals = dict.fromkeys(names, 0.0)
    for group in groups:
        row = f"{group:28}"
        for name in names:
            values = [run["cpu"].get(group, 0.0) for run in runs[name]]
            value = median(values) / args.messages * 1000
            totals[name] += value
            row += f"{value:15.2f}" if any(values) else f"{'-':>15}"
        print(row)
    print(f"{'total':28}" + "".join(f"{totals[name]:15.2f}" for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
