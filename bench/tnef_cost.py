"""CPU per MiB of unpacking winmail.dat (Outlook's TNEF), hostile and ordinary blobs.

Issue 10 item 6: tnefparse trusts a blob's counts and copies the rest of the blob per
attribute, so a 47-byte winmail.dat held a worker for minutes and a few MiB of tiny
attributes for tens of seconds. The figure that shows the fix holds is the CPU the worker
spends in `tnef.unpack_file` (the count check, then tnefparse or the linear reader, in a
sandboxed child) per MiB of blob: flat from 1 MiB to the largest size, and the hostile blob
refused in milliseconds.

Blobs:
  hostile  47 bytes: a MAPI property block claiming 2^32-1 properties (seconds, not per MiB)
  tiny     one real file, then 11-byte attributes up to the size (tnefparse's quadratic case)
  files    Outlook-like: files of 256 KiB each up to the size (crosses the 4 MiB threshold
           where the linear reader takes over from tnefparse)

CPU is this process's plus its children's (time.process_time would miss the sandbox child).
`--baseline-timeout` also runs tnefparse itself on each blob in a child, as before the fix;
past the timeout its figure reads `>N` and larger sizes of that blob are not tried.

  .venv/bin/python bench/tnef_cost.py                      # 1 4 8 16 MiB
  .venv/bin/python bench/tnef_cost.py --sizes 1 4 --baseline-timeout 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from child_cpu import cpu_in_child, cpu_seconds
from mime_builders import PDF, tnef_blob

from orderflow_ingest.jobs import sandbox, tnef

MiB = 1024 * 1024
FILE_SIZE = 256 * 1024


def _attribute(level: int, name: int, kind: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", checksum)


def hostile() -> bytes:
    """The 47-byte blob of tests/test_mime_limits.py."""
    props = struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HHI", 0x0003, 0x3001, 7) * 3
    return struct.pack("<IH", 0x223E9F78, 1) + _attribute(1, 0x9003, 6, props) + b"\0\0"


def tiny(size: int) -> bytes:
    blob = tnef_blob([("Auftrag.pdf", PDF)])
    attribute = _attribute(1, 0x0000, 0x0000, b"")
    return blob + attribute * ((size - len(blob)) // len(attribute))


def files(size: int) -> bytes:
    count = max(1, size // FILE_SIZE)
    return tnef_blob(
        [
            (f"Scan {n}.pdf", PDF + bytes((n + i) % 251 for i in range(FILE_SIZE)))
            for n in range(count)
        ]
    )


def ours(blob: bytes) -> tuple[float, str]:
    """CPU seconds of tnef.unpack_file on `blob` and what it made of it."""
    with tempfile.TemporaryDirectory() as spool:
        path = os.path.join(spool, "winmail.dat")
        Path(path).write_bytes(blob)
        started = cpu_seconds()
        try:
            unpacked = tnef.unpack_file(path, len(blob), spool, "f", 1000)
            outcome = f"{len(unpacked.files)} files"
        except (tnef.TnefError, sandbox.LimitExceeded) as error:
            outcome = f"refused: {str(error)[:50]}"
        return cpu_seconds() - started, outcome


def _tnefparse(blob: bytes) -> None:
    from tnefparse.tnef import TNEF

    with contextlib.suppress(Exception):  # a refusal is an answer too; only the time counts
        TNEF(blob, do_checksum=False)


def baseline(blob: bytes, timeout: float) -> float | None:
    """tnefparse's CPU seconds for `blob` (before the fix), None past `timeout`."""
    return cpu_in_child(lambda: _tnefparse(blob), timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16], help="MiB")
    parser.add_argument("--baseline-timeout", type=float, default=0.0, help="seconds; 0: none")
    args = parser.parse_args()
    timeout = args.baseline_timeout
    blob = hostile()
    seconds, outcome = ours(blob)
    theirs = baseline(blob, timeout) if timeout else None
    before = "" if not timeout else (f"{theirs:.3f}" if theirs is not None else f">{timeout:.0f}")
    print(f"hostile {len(blob)} B: ours {seconds:.3f} s CPU ({outcome}); tnefparse {before} s")
    print(f"{'blob':<6} {'MiB':>4} {'ours s/MiB':>11} {'tnefparse s/MiB':>16}  outcome")
    for shape, build in (("tiny", tiny), ("files", files)):
        gave_up = not timeout
        for size in args.sizes:
            blob = build(size * MiB)
            mib = len(blob) / MiB
            seconds, outcome = ours(blob)
            theirs = None if gave_up else baseline(blob, timeout)
            if theirs is None:
                gave_up = True
                shown = f">{timeout / mib:.2f}" if timeout else "-"
            else:
                shown = f"{theirs / mib:.4f}"
            print(f"{shape:<6} {size:>4} {seconds / mib:>11.4f} {shown:>16}  {outcome}", flush=True)


if __name__ == "__main__":
    main()
