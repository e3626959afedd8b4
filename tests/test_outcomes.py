"""The outcome table: what pipe(8) does with each exit status (DESIGN.md, exit codes)."""

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
