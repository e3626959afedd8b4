"""The S3 lifecycle example in docs/examples (docs/operations.md, "S3 lifecycle rules"): rules
S3 accepts in shape, on the prefixes storage.py really writes, and a backstop that never expires
objects before a purge would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orderflow_ingest import storage

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "s3-lifecycle.json"


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = json.loads(EXAMPLE.read_text())["Rules"]
    return rules


def test_lifecycle_example_prefixes_are_the_key_layout_of_storage() -> None:
    keys = [
        storage.raw_message_key("o-id", "m-id"),
        storage.document_key("o-id", "m-id", "1.2", "PO.pdf"),
    ]
    prefixes = {rule["Filter"]["Prefix"] for rule in _rules()} - {""}
    assert prefixes == {"raw/", "documents/"}
    for key in keys:
        assert any(key.startswith(prefix) for prefix in prefixes), key
    # Every key starts with its prefix and then the org id: per-org rules are possible.
    assert all(key.split("/")[1] == "o-id" for key in keys)


def test_lifecycle_example_rules_are_valid_for_s3() -> None:
    rules = _rules()
    assert len({rule["ID"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["Status"] == "Enabled"
        expiration = rule.get("Expiration", {})
        # S3 refuses ExpiredObjectDeleteMarker together with Days or Date.
        assert not ("ExpiredObjectDeleteMarker" in expiration and "Days" in expiration)
    backstops = [r["Expiration"]["Days"] for r in rules if "Days" in r.get("Expiration", {})]
    assert backstops and min(backstops) >= 365, "a backstop must outlast every retention"
    assert any("AbortIncompleteMultipartUpload" in rule for rule in rules)
    noncurrent = {r["Filter"]["Prefix"] for r in rules if "NoncurrentVersionExpiration" in r}
    assert noncurrent == {"raw/", "documents/"}
