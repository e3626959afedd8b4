"""The feed cursor as a value: opaque, round-trips, and anything else is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderflow_ingest.events import InvalidCursor, decode_cursor, encode_cursor

POSITION = st.integers(min_value=0, max_value=2**63 - 1)


@given(POSITION, POSITION)
def test_a_cursor_round_trips_its_position(txid: int, event_id: int) -> None:
    cursor = encode_cursor(txid, event_id)
    assert "=" not in cursor and "." not in cursor
    assert decode_cursor(cursor) == (txid, event_id)


@pytest.mark.parametrize(
    "cursor", ["", "x", "MTIz", "LTEuMg", "MS4yLjM", "YS5i", "%%%", "OTIyMzM3MjAzNjg1NDc3NTgwOC4x"]
)
def test_a_cursor_not_handed_out_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


@given(st.text(max_size=40))
def test_any_text_either_decodes_or_is_refused(text: str) -> None:
    try:
        txid, event_id = decode_cursor(text)
    except InvalidCursor:
        return
    assert txid >= 0 and event_id >= 0
