"""What the event log costs the drain rate: the same load through our transport with the
event triggers off and on, alternating, in one run on one stack (issue 11: at most 10 %).

With the triggers on, each message writes two events on its way to STORED (message.received
in the insert's transaction, message.stored in the update's). Rounds alternate off/on so a
drift in the machine's load (other processes on the same cores) hits both sides alike; the
figure is the median of each side.

Run by hand (root, Debian packages installed):
  .venv/bin/python bench/event_log_cost.py --messages 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from ingest_throughput import DOMAIN, run_load

from orderflow_ingest.db import connect
from orderflow_ingest.devstack.stack import Stack, StackOptions

TRIGGERS = (("inbound_message", "inbound_message_event_log"), ("document", "document_event_log"))


def set_triggers(stack: Stack, enabled: bool) -> None:
    """As the schema owner: ALTER TABLE ... ENABLE/DISABLE TRIGGER (bench only)."""
    verb = "ENABLE" if enabled else "DISABLE"
    with connect(stack.settings.migrate_url) as conn:
        for table, trigger in TRIGGERS:
            conn.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")
        conn.commit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts its own Postfix instance)")
    base = Path(tempfile.mkdtemp(prefix="orderflow-bench-", dir="/tmp"))
    base.chmod(0o755)
    stack = Stack(base, StackOptions(ingest_domain=DOMAIN))
    rates: dict[bool, list[float]] = {False: [], True: []}
    recipient = f"orders+acme@{DOMAIN}"
    try:
        stack.up()
        run_load(stack, recipient, 100, 5, args.size, rows=True)  # warm-up
        for _ in range(args.rounds):
            for enabled in (False, True):
                set_triggers(stack, enabled)
                seconds = run_load(stack, recipient, args.messages, args.sessions, args.size, True)
                rates[enabled].append(args.messages / seconds)
        set_triggers(stack, True)
    finally:
        stack.down()
        shutil.rmtree(base, ignore_errors=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"\nevent triggers off: {off:7.1f} msg/s  (rounds: {_rounds(rates[False])})")
    print(f"event triggers on:  {on:7.1f} msg/s  (rounds: {_rounds(rates[True])})")
    print(f"cost of the event log on the drain rate: {(off - on) / off:+.1%} (limit 10 %)")
    return 0


def _rounds(values: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values)


if __name__ == "__main__":
    sys.exit(main())
