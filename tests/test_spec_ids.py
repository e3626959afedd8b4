"""Every spec id the repository cites (FR-013, SC-001, "US1 scenario 1", spec 009, ...) has a
row in docs/spec-ids.md, which says what it means: the spec itself is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "docs" / "spec-ids.md"
SEARCHED = ("orderflow_ingest", "tests", "docs", "sql", "bench", "ansible", "postfix-config")
SUFFIXES = {".py", ".md", ".sql", ".c", ".cf", ".yml", ".yaml", ".j2", ".toml", ".txt"}

# How each form is cited → the id as the table writes it.
CITATIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b((?:FR|SC|TC|RE)(?:-[A-Z]+)?-\d{3})\b"), "{0}"),
    (re.compile(r"(?<![A-Za-z])us(\d+)_scenario(\d+)"), "US{0} scenario {1}"),  # test names
    (re.compile(r"\bUS(\d+) scenario (\d+)"), "US{0} scenario {1}"),
    (re.compile(r"\b[Uu]ser story (\d+)"), "US{0}"),
    (re.compile(r"\b[Ss]pec (\d{3})\b"), "spec {0}"),
]


def cited_ids() -> dict[str, str]:
    """id → the first file that cites it."""
    files = [REPO / "README.md", REPO / "CHANGELOG.md"]
    for top in SEARCHED:
        files += sorted(p for p in (REPO / top).rglob("*") if p.suffix in SUFFIXES)
    found: dict[str, str] = {}
    for path in files:
        if path == TABLE or not path.is_file() or "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern, form in CITATIONS:
            for match in pattern.finditer(text):
                found.setdefault(form.format(*match.groups()), str(path.relative_to(REPO)))
    return found


def test_the_search_finds_the_known_citations() -> None:
    cited = cited_ids()
    for known in ("FR-013", "SC-001", "US1 scenario 1", "US2", "spec 009", "FR-ORQ-003"):
        assert known in cited


def test_every_cited_spec_id_is_explained_in_docs() -> None:
    rows = {
        cell.strip().strip("`")
        for line in TABLE.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ")
        for cell in line.split("|")[1:2]
    }
    missing = {spec_id: path for spec_id, path in cited_ids().items() if spec_id not in rows}
    assert not missing, f"cited without a row in docs/spec-ids.md: {missing}"
