"""`orderflow-ingest inspect`: output formats, exit codes, and no backend client imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mime_builders import HEAD, PDF, PNG, b64, message, sha

ORDERFLOW = [sys.executable, "-m", "orderflow_ingest.entry"]

SAMPLE = message(
    *HEAD,
    'Content-Type: multipart/mixed; boundary="b"',
    "",
    "--b",
    "Content-Type: multipart/related; boundary=r",
    "",
    "--r",
    "Content-Type: text/html",
    "",
    '<img src="cid:logo">',
    "--r",
    "Content-Type: image/png; name=logo.png",
    "Content-ID: <logo>",
    "Content-Transfer-Encoding: base64",
    "",
    b64(PNG),
    "--r--",
    "--b",
    'Content-Type: application/pdf; name="=?UTF-8?Q?Bestellung_=C3=9C.pdf?="',
    "Content-Disposition: inline",
    "Content-Transfer-Encoding: base64",
    "",
    b64(PDF),
    "--b--",
)


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*ORDERFLOW, *args], capture_output=True, timeout=60)


def test_inspect_json_has_documents_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "order.eml"
    path.write_bytes(SAMPLE)
    done = run("inspect", str(path), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (document,) = result["documents"]
    assert document["part"] == "1.2"
    assert document["filename"] == "Bestellung Ü.pdf"
    assert document["mime_type"] == "application/pdf"
    assert document["size_bytes"] == len(PDF)
    assert document["sha256"] == sha(PDF)
    skipped = {s["part"]: s["reason"] for s in result["skipped"]}
    assert skipped["1.1.2"].startswith("inline body image")
    assert all({"part", "reason"} <= set(s) for s in result["skipped"])


def test_inspect_text_lists_every_part_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "order.eml"
    path.write_bytes(SAMPLE)
    done = run("inspect", str(path))
    assert done.returncode == 0
    text = done.stdout.decode()
    for part in ("1 ", "1.1 ", "1.1.1 ", "1.1.2 ", "1.2 "):
        assert any(line.startswith(part) for line in text.splitlines()), part
    assert "DOCUMENT" in text and "inline body image" in text


def test_inspect_reads_standard_input() -> None:
    done = subprocess.run(
        [*ORDERFLOW, "inspect", "-", "--json"], input=SAMPLE, capture_output=True, timeout=60
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["documents"][0]["sha256"] == sha(PDF)


def test_inspect_malformed_input_is_a_result_with_exit_0(tmp_path: Path) -> None:
    path = tmp_path / "bad.eml"
    path.write_bytes(b"")
    done = run("inspect", str(path), "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["error"]["error"] == "unparseable"


def test_inspect_missing_file_is_a_usage_error_without_traceback(tmp_path: Path) -> None:
    done = run("inspect", str(tmp_path / "nope.eml"))
    assert done.returncode == 66
    assert b"Traceback" not in done.stderr and b"cannot read" in done.stderr


def test_inspect_imports_no_backend_client(tmp_path: Path) -> None:
    path = tmp_path / "order.eml"
    path.write_bytes(SAMPLE)
    code = (
        "import sys\n"
        "from orderflow_ingest.cli import app\n"
        f"try:\n    app(['inspect', {str(path)!r}], standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "loaded = sorted(m for m in ('boto3', 'botocore', 'psycopg', 'redis', 'rq')"
        " if m in sys.modules)\n"
        "print('LOADED', loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"LOADED []" in done.stdout
