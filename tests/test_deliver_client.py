"""The per-message client: argument handling and its failure behaviour (pipe(8) contract)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orderflow_ingest.pipe.client import UsageError, parse_args


def test_recipient_after_double_dash_is_never_an_option() -> None:
    options = parse_args(["--sender", "a@b", "--queue-id", "Q1", "--", "--config"])
    assert options["recipient"] == "--config"
    assert options["sender"] == "a@b"


def test_null_sender_is_allowed() -> None:
    assert parse_args(["--sender", "", "--", "orders+acme@x"])["sender"] == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--sender", "a"],
        ["--", "r"],
        ["--sender", "a", "--", "r1", "r2"],
        ["--bogus", "x", "--", "r"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def run_deliver(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    script = Path(sys.executable).parent / "orderflow-ingest"
    return subprocess.run(
        [str(script), "deliver", *args],
        input=b"Subject: x\r\n\r\nbody\r\n",
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_service_down_defers_with_a_short_text_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "ingest.env"
    config.write_text(f"ORDERFLOW_DELIVER_SOCKET={tmp_path}/absent.sock\n")
    result = run_deliver(
        ["--config", str(config), "--sender", "a@b.example", "--", "orders+acme@x.example"],
        {"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 75
    output = result.stdout + result.stderr
    assert b"Traceback" not in output and str(tmp_path).encode() not in output
    assert b"temporary failure" in result.stdout


def test_usage_error_defers_rather_than_bounces(tmp_path: Path) -> None:
    result = run_deliver(["--sender"], {"PATH": os.environ["PATH"]})
    assert result.returncode == 75
    assert b"Traceback" not in result.stdout + result.stderr


def test_broken_config_defers(tmp_path: Path) -> None:
    config = tmp_path / "ingest.env"
    config.write_text("this is not a setting\n")
    result = run_deliver(
        ["--config", str(config), "--sender", "a@b", "--", "orders+acme@x"],
        {"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 75
    assert str(tmp_path).encode() not in result.stdout + result.stderr


def test_envelope_framing_round_trips_awkward_addresses() -> None:
    from orderflow_ingest.pipe.protocol import format_envelope, parse_envelope

    for sender, recipient in [("", "orders+acme@x"), ("-a b\t;$(x)@y", "orders+acme@x\n")]:
        framed = format_envelope(sender, recipient, "QID") + b"From: x\r\n"
        assert parse_envelope(framed[:3]) is None
        parsed = parse_envelope(framed)
        assert parsed == ((sender, recipient, "QID"), b"From: x\r\n")


def test_run_as_a_file_without_site_and_broken_install_defers(tmp_path: Path) -> None:
    """pipe(8) runs `python3 -E -s -S .../pipe/client.py`; a copy without its package around it
    (a broken installation) must still answer 75 with no traceback."""
    lonely = tmp_path / "orderflow_ingest" / "pipe" / "client.py"
    lonely.parent.mkdir(parents=True)
    lonely.write_bytes((Path(__file__).parents[1] / "orderflow_ingest/pipe/client.py").read_bytes())
    result = subprocess.run(
        [sys.executable, "-E", "-s", "-S", str(lonely), "--sender", "a@b", "--", "orders+acme@x"],
        input=b"Subject: x\r\n\r\nbody\r\n",
        capture_output=True,
        env={},
        timeout=30,
        check=False,
    )
    assert result.returncode == 75
    assert b"Traceback" not in result.stdout + result.stderr
