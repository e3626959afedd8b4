"""Fuzzing in CI (issue 10, "make the project attack itself"): every atheris target for a fixed
number of inputs with a fixed seed, so a run is repeatable and cannot flake; any invariant
broken is a failure with the input's traceback. `make fuzz` runs the same targets for longer.

Also the regression tests for what fuzzing found, each named after the fault.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_targets  # noqa: E402
import run_all  # noqa: E402

RUNS = 2000


@pytest.mark.slow
@pytest.mark.parametrize("target", run_all.TARGETS)
def test_fuzz_target_holds_its_invariants_for_fixed_inputs(target: str, tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    flags = [f"-runs={RUNS}", "-seed=1", "-timeout=120"]
    run = subprocess.run(
        run_all.fuzz_command(target, tmp_path, flags),
        env=run_all.fuzz_env(),
        capture_output=True,
        check=False,
        timeout=900,
    )
    output = run.stderr.decode("utf-8", "replace")
    tail = "\n".join(line for line in output.splitlines() if "Instrumenting" not in line)[-6000:]
    assert run.returncode == 0, f"{target}: invariant broken\n{tail}"
    total, rate = run_all.execs(run.stderr)
    assert total >= RUNS, tail
    print(f"fuzz {target}: {total} execs, {rate} exec/s")


@pytest.mark.parametrize("target", run_all.TARGETS)
def test_fuzz_target_holds_on_every_seed(target: str) -> None:
    """The checked-in seeds, crash inputs found earlier among them, without atheris: quick."""
    check = fuzz_targets.TARGETS[target]
    for seed in sorted((FUZZ / "corpus" / target).iterdir()):
        try:
            check(seed.read_bytes())
        except AssertionError as error:
            raise AssertionError(f"{target}/{seed.name}: {error}") from error


def _deliver_asan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FUZZ / "deliver_asan.py"), "--seed", "1", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


@pytest.mark.slow
def test_deliver_c_under_asan_ubsan_survives_hostile_arguments_settings_and_replies() -> None:
    """deliver.c with -fsanitize=address,undefined: hostile argv, settings files, standard
    input and a fake service answering garbled, cut or overlong replies. Exit 0/67/75 only,
    no sanitizer report, one printable line out, a 0 only for a message that arrived whole."""
    run = _deliver_asan("--cases", "300", "--mode", "hostile")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    print(run.stdout.strip())


@pytest.mark.slow
def test_deliver_c_killed_parent_never_delivers_a_cut_message_as_complete() -> None:
    """deliver_asan fuzzing (issue 10 item 1): pipe(8) SIGKILLed after writing part of the
    message. The kernel closes the dying parent's pipe before it reparents the client, so
    deliver.c's `getppid() != parent` check after EOF often still sees the old parent and sends
    the trailer: the service receives the prefix as a complete, verified message."""
    run = _deliver_asan("--cases", "20", "--mode", "parent-killed")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# --- regressions: what the fuzzers found -----------------------------------------------------


def test_tnef_long_name_with_nul_never_reaches_storage_as_original_filename() -> None:
    """inspect fuzzing: a winmail.dat whose MAPI long name decodes to a NUL gave
    original_filename 'order…\\x00…', which PostgreSQL refuses (issue 10 item 4)."""
    from orderflow_ingest.jobs.extract import extract_message

    raw = (FUZZ / "corpus" / "inspect" / "crash-tnef-long-name-nul.eml").read_bytes()
    with tempfile.TemporaryDirectory() as spool, extract_message(io.BytesIO(raw), spool) as got:
        names = [d.original_filename for d in got.documents if d.original_filename]
        assert names, "the files inside winmail.dat should still become documents"
        for name in names:
            fuzz_targets.clean_for_storage(name, "original_filename")


def test_q_encoded_word_after_8bit_rfc2231_value_does_not_raise() -> None:
    """filenames fuzzing: an encoded word inside a value already decoded from 8-bit bytes
    raised UnicodeEncodeError in _decode_q (issue 10 item 4: one bad name fails the message)."""
    from orderflow_ingest.jobs import filenames

    raw = (FUZZ / "corpus" / "filenames" / "crash-q-word-after-8bit-rfc2231.txt").read_bytes()
    filenames.parse_header_params(raw.decode("utf-8", "surrogateescape"))
    filenames.decode_rfc2047("\xd7=?utf-8?q?+2\xd7A-.pdf?=")


def test_uudecode_short_line_is_not_padded_into_more_bytes_than_it_carries() -> None:
    """decoders fuzzing: a uuencode line's first character declares its length and binascii
    pads a short line with NULs, so `M\\n` (2 bytes) decodes to 45 bytes: a message of such
    lines stores a document ~22x its size. A short line should be a defect, not padding."""
    from orderflow_ingest.jobs import decoders

    decoder, _ = decoders.make_decoder("x-uuencode")
    encoded = b"begin 644 a.bin\n" + b"M\n" * 1000 + b"`\nend\n"
    out = decoder.feed(encoded) + decoder.finish()
    assert len(out) <= len(encoded), f"{len(encoded)} bytes in, {len(out)} out"


def test_sanitise_never_returns_a_name_it_would_itself_refuse() -> None:
    """filenames fuzzing: a long name whose alphanumerics sit past the length cap came back
    as 66 U+FFFD characters: _cap_length cuts after the "nothing usable left" check, so the
    result has no letter or digit and sanitise(result) is None. The document should get the
    fallback name instead."""
    from orderflow_ingest.jobs import filenames

    raw = FUZZ / "corpus" / "filenames" / "crash-sanitise-not-idempotent-after-cap.txt"
    text = filenames.decode_header_text(raw.read_bytes().decode("utf-8", "surrogateescape"))
    name = filenames.sanitise(text)
    assert name is None or any(ch.isalnum() for ch in name), repr(name)
