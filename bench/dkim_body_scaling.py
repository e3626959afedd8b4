"""CPU per MiB of the milter's streamed DKIM body hash, by body size and body shape.

Linear work means the same seconds per MiB at 1 MiB and at 25 MiB; a quadratic hasher's
figure grows with the size (issue 10, item 7: a body of whitespace without line ends). The
baseline in the same run is dkimpy's own canonicalization of the whole body (its parser's
line split, `CanonicalizationPolicy.canonicalize_body`, sha256): what `dkim.verify` spends.

Bodies (each fed in libmilter's 65535-byte chunks, as Postfix sends them):
  text     an order's lines of text, CRLF line ends
  spaces   spaces and tabs, no line end at all (the adversarial case)
  cr_ws    " \\r" repeated, no line end (a CR is whitespace to a naive strip)
  runs     lines of 20 000 spaces then "x " (a `[\t ]+\n` regex backtracks over each run)
  ws_lines lines of only whitespace (canonically empty lines)

Figures are CPU seconds (time.process_time) per MiB, per signature, for `--signatures`
relaxed signatures (distinct l= so each gets its own hash, as an attacker would arrange).
dkimpy's own canonicalization is itself quadratic in a whitespace run (its `[\t ]+\r\n`
regex rescans the run from every position: 64 KiB of spaces cost it 9 s here), so each
baseline runs in a child process under `--baseline-timeout`; past it the figure reads
`>N` and the larger sizes of that shape are not tried.

  .venv/bin/python bench/dkim_body_scaling.py                  # 1 4 8 16 25 MiB, 1 signature
  .venv/bin/python bench/dkim_body_scaling.py --signatures 8 --sizes 1 8
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import time
from collections.abc import Callable

import dkim
from child_cpu import cpu_in_child
from dkim.canonicalization import CanonicalizationPolicy

from orderflow_ingest.milter.dkim_body import BodyHashes, BodyHashKey

MiB = 1024 * 1024
CHUNK = 65535  # libmilter's MILTER_CHUNK_SIZE: the most Postfix sends per body callback

SHAPES: dict[str, bytes] = {
    "text": b"10 x widget, part no. 4711-0815, unit price 12.50 EUR, delivery week 12\r\n",
    "spaces": b" \t  \t \t\t   ",
    "cr_ws": b" \r",
    "runs": b" " * 20000 + b"x \r\n",
    "ws_lines": b" \t \r\n",
}


def body(shape: str, size: int) -> bytes:
    unit = SHAPES[shape]
    return (unit * (size // len(unit) + 1))[:size]


def cpu(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def streamed(data: bytes, signatures: int) -> None:
    hashes = BodyHashes()
    keys = [
        BodyHashKey(True, "sha256", None if n == 0 else len(data) - n) for n in range(signatures)
    ]
    for key in keys:
        hashes.want(key)
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        hashes.update(bytes(view[start : start + CHUNK]))
    for key in keys:
        hashes.digest(key)


def dkimpy(data: bytes) -> None:
    _headers, parsed = dkim.rfc822_parse(b"X: y\r\n\r\n" + data)
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    hashlib.sha256(policy.canonicalize_body(parsed)).digest()


def baseline(data: bytes, timeout: float) -> float | None:
    """dkimpy's CPU seconds for `data`, or None when it took longer than `timeout`."""
    return cpu_in_child(lambda: dkimpy(data), timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16, 25], help="MiB")
    parser.add_argument("--signatures", type=int, default=1, choices=range(1, 9))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--baseline-timeout", type=float, default=30.0, help="seconds")
    args = parser.parse_args()
    print(
        f"CPU seconds per MiB per signature ({args.signatures} relaxed signature(s)); "
        "dkimpy = its own whole-body canonicalization"
    )
    print(f"{'shape':<9} {'MiB':>4} {'ours s/MiB':>11} {'dkimpy s/MiB':>13}")
    for shape in args.shapes:
        baseline_gave_up = False
        for size in args.sizes:
            data = body(shape, size * MiB)
            ours = cpu(functools.partial(streamed, data, args.signatures)) / size / args.signatures
            theirs = None if baseline_gave_up else baseline(data, args.baseline_timeout)
            if theirs is None:
                baseline_gave_up = True
                shown = f">{args.baseline_timeout / size:.1f}"
            else:
                shown = f"{theirs / size:.4f}"
            print(f"{shape:<9} {size:>4} {ours:>11.4f} {shown:>13}", flush=True)


if __name__ == "__main__":
    main()
