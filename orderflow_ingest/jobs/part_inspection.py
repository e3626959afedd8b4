"""`orderflow-ingest inspect FILE`: the extraction job's decisions for a local .eml, no backends.

Support answers "why did my order not arrive as a document?" with this: the same walker and
rules as the worker, printed per part. It never raises on the message's content: a malformed
message yields a result with defects. Imports nothing that talks to a backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orderflow_ingest.jobs.extract import Extraction, extract_message


def inspect_file(path: Path, max_depth: int = 20) -> dict[str, Any]:
    """The classification of one message file, as the JSON `inspect --json` prints."""
    with path.open("rb") as handle:
        return inspect_stream(handle, max_depth=max_depth)


def inspect_stream(handle: Any, max_depth: int = 20) -> dict[str, Any]:
    extraction: Extraction | None = None
    try:
        extraction = extract_message(handle, max_depth=max_depth)
        return extraction.as_json()
    except Exception as error:  # inspect's promise: a result, whatever the input
        return {
            "documents": [],
            "skipped": [],
            "defects": [],
            "error": {"error": "inspect_failed", "detail": f"{type(error).__name__}: {error}"},
            "size_bytes": 0,
        }
    finally:
        if extraction is not None:
            extraction.close()


def render_text(result: dict[str, Any]) -> str:
    """One line per part, in part order: decision, type, name, size and the reason."""
    rows: list[tuple[str, str]] = []
    for document in result["documents"]:
        status = "DOCUMENT" if document["status"] == "STORED" else "DOCUMENT(FAILED)"
        rows.append(
            (
                document["part"],
                f"{document['part']:<12} {status:<16} {document['mime_type']:<28} "
                f"{document['filename']!r} {document['size_bytes']} bytes "
                f"sha256={document['sha256'][:16]}…  {document['reason']}",
            )
        )
    for skipped in result["skipped"]:
        rows.append(
            (
                skipped["part"],
                f"{skipped['part']:<12} {skipped['decision']:<16} "
                f"{skipped['content_type'] or '-':<28} {skipped['reason']}",
            )
        )
    rows.sort(key=lambda row: tuple(int(x) if x.isdigit() else 0 for x in row[0].split(".")))
    lines = [text for _, text in rows]
    lines.append(
        f"{len(result['documents'])} document(s), {len(result['skipped'])} other part(s), "
        f"{result['size_bytes']} bytes"
    )
    for defect in result["defects"]:
        lines.append(f"defect {defect['part']}: {defect['defect']}")
    if result.get("error"):
        lines.append(f"error: {result['error']['error']}: {result['error'].get('detail', '')}")
    return "\n".join(lines)


def render_json(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, indent=2)
