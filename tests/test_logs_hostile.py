"""Log lines survive hostile field values (issue 10 item 12).

A Subject, Message-ID or filename from mail can hold a NUL or a lone surrogate (an undecodable
byte kept by surrogateescape, an encoded word decoded to half a UTF-16 pair). The line must be
written anyway, as valid UTF-8 JSON: a dropped line is a message nobody can trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from orderflow_ingest import logs


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "orderflow.log"
    logger = logging.getLogger(logs.LOGGER_NAME)
    root = logging.getLogger()
    saved = (logger.handlers[:], logger.level, logger.propagate, root.handlers[:], root.level)
    logs.setup_logging("INFO", str(path), component="test")
    try:
        yield path
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
        root.handlers[:], root.level = saved[3], saved[4]


def _lines(path: Path) -> list[dict[str, object]]:
    text = path.read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    return [json.loads(line) for line in text.splitlines()]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_item12_log_lines_never_dropped_for_a_lone_surrogate_or_nul(
    log_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    surrogate_subject = "Bestellung \udcfc\udcdf"  # Latin-1 bytes kept by surrogateescape
    logs.log_event("ingest.stored", subject=surrogate_subject, message_id="<a\x00b@x>")
    logs.log_event("jobs.part", file_name="\ud800.pdf", note="Größe")
    logs.log_event("jobs.odd", weird={(1, 2): "tuple key"}, thing=_Unprintable())
    try:
        raise ValueError("bad \udcff value")
    except ValueError:
        logs.log_event("jobs.failed", logging.ERROR, exc_info=True, trace_id="t1")

    lines = _lines(log_file)
    assert [line["event"] for line in lines] == [
        "ingest.stored",
        "jobs.part",
        "jobs.odd",
        "jobs.failed",
    ]
    assert lines[0]["subject"] == surrogate_subject  # the JSON escape reads back exactly
    assert lines[0]["message_id"] == "<a\x00b@x>"
    assert lines[1]["file_name"] == "\ud800.pdf" and lines[1]["note"] == "Größe"
    assert "tuple key" in str(lines[2]["fields"]) and "_Unprintable" in str(lines[2]["fields"])
    assert "bad \udcff value" in str(lines[3]["exception"]) and lines[3]["trace_id"] == "t1"
    raw = log_file.read_bytes()
    assert b"\x00" not in raw and "Größe".encode() in raw
    assert "Logging error" not in capsys.readouterr().err
