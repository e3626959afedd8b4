"""orderflow-ingest: purchase orders by email, from Postfix to documents."""

from __future__ import annotations


def version() -> str:
    """The installed distribution's version (pyproject.toml; CHANGELOG.md says what changed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("orderflow-ingest")
    except PackageNotFoundError:
        return "unknown (not installed)"
