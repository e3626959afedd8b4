"""The exit-status and outcome table: what pipe(8) does with each status (docs/architecture.md)."""

import ast
import os
import re
from pathlib import Path

from orderflow_ingest import outcomes
from orderflow_ingest.outcomes import EX_NOUSER, EX_OK, EX_TEMPFAIL, Outcome

# pipe(8) defers on these statuses and bounces on every other non-zero one.
PIPE_DEFERS = {71, 75}


def test_only_a_sender_fixable_outcome_bounces() -> None:
    bouncing = {o for o in Outcome if o.exit_status not in PIPE_DEFERS and o.exit_status != 0}
    assert bouncing == {Outcome.UNKNOWN_ORG}


def test_statuses_and_replies_agree() -> None:
    for outcome in Outcome:
        code = outcome.smtp_reply.split()[0]
        if outcome.exit_status == EX_OK:
            assert code == "250"
        elif outcome.exit_status == EX_TEMPFAIL:
            assert code.startswith("4")
        else:
            assert outcome.exit_status == EX_NOUSER and code == "550"


def test_texts_carry_no_detail() -> None:
    # Text may reach a possibly forged sender in a bounce: short, fixed, no paths or errors.
    for outcome in Outcome:
        assert len(outcome.text) < 60
        assert "/" not in outcome.text and "Traceback" not in outcome.text


def test_malformed_content_and_duplicates_are_accepted_not_bounced() -> None:
    assert Outcome.MALFORMED_STORED.exit_status == EX_OK
    assert Outcome.DUPLICATE.exit_status == EX_OK
    assert Outcome.BACKEND_UNAVAILABLE.exit_status == EX_TEMPFAIL


def test_exit_statuses_are_the_sysexits_values() -> None:
    # One table, on the standard library's os.EX_* (<sysexits.h>): pipe(8) reads them so.
    sysexits = {name: value for name, value in vars(outcomes).items() if name.startswith("EX_")}
    assert sysexits.keys() >= {"EX_OK", "EX_NOUSER", "EX_TEMPFAIL", "EX_CONFIG", "EX_SOFTWARE"}
    for name, value in sysexits.items():
        assert value == getattr(os, name), name
    assert (outcomes.EXIT_FAILURE, outcomes.EXIT_USAGE) == (1, 2)


def test_no_other_module_defines_an_exit_status() -> None:
    # Everything else imports the table: an `EX_x = 75` elsewhere is a second copy of a fact.
    package = Path(outcomes.__file__).parent
    copies = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(outcomes.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and re.fullmatch(r"EX(IT)?_[A-Z]+", name.id):
                        copies.append(f"{path.relative_to(package)}:{node.lineno} {name.id}")
    assert copies == []


def test_the_c_client_exits_only_with_the_outcomes_statuses() -> None:
    # deliver.c includes <sysexits.h> and passes the service's status through: the names it
    # uses are exactly the statuses the outcome table can produce, and it defines none itself.
    source = (Path(outcomes.__file__).parent / "pipe" / "deliver.c").read_text(encoding="utf-8")
    source = re.sub(r"/\*.*?\*/|//[^\n]*", "", source, flags=re.DOTALL)  # code, not comments
    assert "#include <sysexits.h>" in source
    assert not re.search(r"#\s*define\s+EX_", source)
    used = {getattr(outcomes, name) for name in re.findall(r"\bEX_[A-Z]+\b", source)}
    assert used == {outcome.exit_status for outcome in Outcome}
