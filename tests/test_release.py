"""What an operator upgrading a host relies on: `--version`, and a CHANGELOG that names it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_version_flag_prints_the_installed_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orderflow_ingest.entry", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"orderflow-ingest {version('orderflow-ingest')}"


def test_the_changelog_has_an_entry_for_this_version() -> None:
    headings = [
        line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")
    ]
    assert headings, "CHANGELOG.md has no version headings"
    assert headings[0].split()[1] == version("orderflow-ingest")
