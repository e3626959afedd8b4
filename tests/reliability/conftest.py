"""The full reliability suite (issue 7): one milter-enabled stack with RQ workers, shared by
the scenario modules, which run in file order (load, faults, restarts, hostile, abuse).

It takes minutes, so it runs only when asked for: `make reliability` (pytest -m reliability
tests/reliability) or RELIABILITY=1. Otherwise its tests are deselected, so `make test` and
any other `-m` selection never start it by accident.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_harness import Harness, ensure_reporter, reliability_stack

HERE = Path(__file__).resolve().parent


def _wanted(config: pytest.Config) -> bool:
    return (
        "reliability" in (config.getoption("markexpr") or "")
        or os.environ.get("RELIABILITY") == "1"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]
    for item in ours:
        item.add_marker(pytest.mark.reliability)
    if ours and not _wanted(config):
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]


@pytest.fixture(scope="session")
def rel(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The suite's stack: milter (with a loopback DNS server), two workers, four orgs."""
    ensure_reporter(request.config)
    with reliability_stack(keep=request.config.getoption("--keep-stack"), workers=2) as harness:
        yield harness
