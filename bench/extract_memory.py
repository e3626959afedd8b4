"""Attachment extraction: wall time and peak RSS, our streaming walker next to the stdlib.

    .venv/bin/python bench/extract_memory.py [--sizes 25,100] [--config ENV_FILE]

For each message size it writes a message to a temporary file (25 MB: five attachments of
5 MB each as encoded in the message; other sizes: one attachment filling it), then runs each
approach in its own subprocess, so one approach's memory cannot flatter or burden another:

- ours:   `extract_message` (walk, decode, sha256, spool to a temp file per document);
- ours+s3 (with --config): the same, then each document to S3 through storage.put_file;
- stdlib: `email.message_from_binary_file` (compat32, its default policy) +
  `get_payload(decode=True)` + sha256 per part.

Peak RSS is the child's own VmHWM (not ru_maxrss, which Linux carries across exec); time is
measured inside the child around the work (interpreter start and imports excluded), and
throughput is message bytes / that time.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1000 * 1000
MIB = 1024 * 1024


def write_message(path: Path, size_mb: int) -> int:
    """A multipart/mixed message of about size_mb MB, attachments base64 as mailers send them."""
    # base64 with 76-char lines grows 4/3 * 77/76; leave room for headers.
    decoded = int(size_mb * MB * 3 / 4 * 76 / 77) - 4096
    count = 5 if size_mb == 25 else 1
    attachments = [decoded // count] * count
    block = os.urandom(3 * MIB)  # repeated random block: fast to generate, not compressible
    with path.open("wb") as out:
        out.write(
            b"From: buyer@customer.example\nTo: orders+acme@orderflow.test\n"
            b"Subject: bench\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/mixed; boundary="bench-boundary"\n\n'
            b"--bench-boundary\nContent-Type: text/plain\n\nSee attached.\n"
        )
        for number, size in enumerate(attachments, 1):
            out.write(
                b"--bench-boundary\nContent-Type: application/pdf\n"
                + f'Content-Disposition: attachment; filename="order-{number}.pdf"\n'.encode()
                + b"Content-Transfer-Encoding: base64\n\n"
            )
            remaining = size
            first = True
            while remaining > 0:
                chunk = block[: min(len(block), remaining)]
                if first:
                    chunk = b"%PDF-1.7\n" + chunk[9:]
                    first = False
                out.write(base64.encodebytes(chunk))  # 57-byte groups -> 76-char lines
                remaining -= len(chunk)
        out.write(b"--bench-boundary--\n")
    return path.stat().st_size


def run_ours(path: str, config: str | None) -> dict[str, object]:
    from orderflow_ingest.jobs.extract import extract_message

    started = time.perf_counter()
    with open(path, "rb") as handle, extract_message(handle) as extraction:
        documents = [(d.filename, d.size_bytes, d.sha256) for d in extraction.documents]
        if config:
            from orderflow_ingest import storage
            from orderflow_ingest.settings import load_settings

            settings = load_settings(config)
            client = storage.make_client(settings)
            for number, document in enumerate(extraction.documents):
                key = f"bench/{os.getpid()}/{number}/{document.filename}"
                storage.put_file(
                    client, settings.s3_bucket, key, document.spool_path, document.mime_type
                )
                client.delete_object(Bucket=settings.s3_bucket, Key=key)
    return {"seconds": time.perf_counter() - started, "documents": documents}


def run_stdlib(path: str) -> dict[str, object]:
    import email

    started = time.perf_counter()
    with open(path, "rb") as handle:
        message = email.message_from_binary_file(handle)  # compat32, the stdlib default
    documents = []
    for part in message.walk():
        if part.get_filename():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            documents.append(
                (part.get_filename(), len(payload), hashlib.sha256(payload).hexdigest())
            )
    return {"seconds": time.perf_counter() - started, "documents": documents}


def peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec.

    ru_maxrss would not do: Linux carries it across execve, so a child forked from a parent
    that once held the generated message would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(mode: str, path: str, config: str | None) -> None:
    result = run_stdlib(path) if mode == "stdlib" else run_ours(path, config)
    result["peak_rss_kib"] = peak_rss_kib()
    print(json.dumps(result))


def measure(mode: str, path: Path, config: str | None) -> dict[str, object]:
    argv = [sys.executable, __file__, "--child", mode, str(path)]
    if config and mode == "ours+s3":
        argv += ["--config", config]
    done = subprocess.run(argv, capture_output=True, check=True, text=True)
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="25,100", help="Message sizes in MB, comma-separated.")
    parser.add_argument("--config", help="Settings file of a stack: also measure upload to S3.")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.config)
        return 0
    modes = ["ours", "stdlib"] + (["ours+s3"] if args.config else [])
    print(f"{'message':>10} {'approach':>8} {'seconds':>8} {'MiB/s':>7} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory(prefix="orderflow-bench-") as work:
        for size_mb in (int(size) for size in args.sizes.split(",")):
            path = Path(work) / f"message-{size_mb}mb.eml"
            size = write_message(path, size_mb)
            results = {mode: measure(mode, path, args.config) for mode in modes}
            if results["ours"]["documents"] != results["stdlib"]["documents"]:
                print("MISMATCH: our documents differ from the stdlib's", file=sys.stderr)
                return 1
            for mode, result in results.items():
                seconds = float(result["seconds"])  # type: ignore[arg-type]
                print(
                    f"{size / MB:>8.1f}MB {mode:>8} {seconds:>8.2f} {size / MIB / seconds:>7.1f}"
                    f" {int(result['peak_rss_kib']) / 1024:>13.1f}"  # type: ignore[call-overload]
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
