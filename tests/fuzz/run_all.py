"""`make fuzz`: every atheris target for FUZZ_SECONDS each, then deliver.c under ASan/UBSan.

Each target keeps a growing working corpus in FUZZ_DIR/<target> (the checked-in seeds in
tests/fuzz/corpus/<target> are read, never written) and leaves crash inputs there as
`crash-*`. Prints execs per target and exits non-zero when any target found a crash; a crash
input belongs in the seed corpus and in a regression test (tests/test_fuzz_short.py).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("walker", "decoders", "filenames", "header_facts", "wire", "inspect")
_DONE = re.compile(rb"#(\d+)\s+DONE .*?exec/s: (\d+)")
_ANY = re.compile(rb"#(\d+)\s+\S+\s+cov:")


def fuzz_command(target: str, work: Path, flags: list[str]) -> list[str]:
    return [
        sys.executable,
        str(HERE / "run_atheris.py"),
        target,
        *flags,
        "-max_len=8192",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={work}/",
        str(work / "corpus"),
        str(HERE / "corpus" / target),
    ]


def fuzz_env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0"}


def execs(output: bytes) -> tuple[int, int]:
    """(total execs, execs per second) from libFuzzer's output."""
    done = _DONE.findall(output)
    if done:
        return int(done[-1][0]), int(done[-1][1])
    progress = _ANY.findall(output)
    return (int(progress[-1]), 0) if progress else (0, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)))
    parser.add_argument("--dir", default=os.environ.get("FUZZ_DIR", "/tmp/orderflow-fuzz"))
    parser.add_argument("--target", action="append", choices=TARGETS)
    parser.add_argument("--no-deliver", action="store_true", help="skip deliver.c under ASan")
    args = parser.parse_args()
    failed: list[str] = []
    for target in args.target or TARGETS:
        work = Path(args.dir) / target
        (work / "corpus").mkdir(parents=True, exist_ok=True)
        flags = [f"-max_total_time={args.seconds}", f"-timeout={max(30, args.seconds)}"]
        run = subprocess.run(
            fuzz_command(target, work, flags), env=fuzz_env(), capture_output=True, check=False
        )
        total, rate = execs(run.stderr)
        status = "ok" if run.returncode == 0 else f"CRASH (exit {run.returncode})"
        print(f"{target:<13} {total:>9} execs  {rate:>6} exec/s  {status}", flush=True)
        if run.returncode != 0:
            failed.append(target)
            tail = run.stderr.decode("utf-8", "replace").splitlines()[-30:]
            print("\n".join("    " + line for line in tail if "Instrumenting" not in line))
    if not args.no_deliver:
        deliver = subprocess.run(
            [sys.executable, str(HERE / "deliver_asan.py"), "--seconds", str(args.seconds)],
            check=False,
        )
        if deliver.returncode != 0:
            failed.append("deliver.c (ASan/UBSan)")
    if failed:
        print(f"fuzzing found crashes in: {', '.join(failed)} (inputs under {args.dir})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
