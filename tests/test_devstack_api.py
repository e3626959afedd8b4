"""`dev up` starts the whole system by default, and `make demo` leaves the web inbox running
with a sign-in link that works after the demo has exited (issues 12 and 15).

The option tests are pure logic; the demo test runs the demo as `make demo` does, in a
directory of its own, then signs in over HTTP as a browser would, finds the order by
`filename:`, downloads its raw message and document, and stops the stack with `dev down`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inbox_support import CSRF_FIELD, TOKEN_FIELD, form_field

from orderflow_ingest.devstack.command import up_options
from orderflow_ingest.devstack.options import StackOptions
from orderflow_ingest.devstack.processes import ProcessRef
from orderflow_ingest.devstack.stack import Stack

NO_FLAGS: dict[str, object] = {"milter": None, "workers": None, "deliver": None, "api": None}


# --- what `dev up` starts (no stack) ----------------------------------------------------------


def test_dev_up_starts_the_whole_system_by_default() -> None:
    options = up_options(None, {}, NO_FLAGS)
    assert (options.milter, options.workers, options.deliver, options.api) == (True, 1, True, True)
    assert options == StackOptions.whole_system()


def test_dev_up_flags_leave_parts_out() -> None:
    flags = {"milter": False, "workers": 0, "deliver": None, "api": False}
    assert up_options(None, {}, flags) == StackOptions()


def test_tests_stacks_start_without_milter_workers_or_api() -> None:
    """The fixtures build StackOptions themselves; its defaults did not change."""
    options = StackOptions()
    assert (options.milter, options.workers, options.deliver, options.api) == (
        False,
        0,
        True,
        False,
    )


def test_a_later_up_keeps_the_directory_s_choices_and_applies_flags() -> None:
    saved = StackOptions(workers=3, api=False)
    assert up_options(saved, {}, NO_FLAGS) == saved
    changed = up_options(saved, {}, {**NO_FLAGS, "api": True})
    assert changed.api and changed.workers == 3


def test_servers_named_in_the_environment_are_used_on_a_first_up() -> None:
    environ = {"ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1/0", "ORDERFLOW_DEBUG": "1"}
    options = up_options(None, environ, NO_FLAGS)
    assert options.external == {"ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert options.api


# --- make demo ----------------------------------------------------------------------------------


def _cli() -> str:
    return str(Path(sys.prefix) / "bin" / "orderflow-ingest")


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A directory under /tmp the service users can reach; the stack in it is stopped after."""
    base = Path(tempfile.mkdtemp(prefix="orderflow-demo-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        if (base / "stack.json").exists():
            subprocess.run([_cli(), "dev", "down", "--dir", str(base)], timeout=180, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _printed(output: str, label: str) -> str:
    match = re.search(rf"^\s+{label}:\s+(\S.*)$", output, re.MULTILINE)
    assert match is not None, f"{label!r} not in the demo's output:\n{output[-3000:]}"
    return match.group(1).strip()


def _sign_in(http: httpx.Client, link: str) -> None:
    """What a person does with the printed link: open it, press "Sign in"."""
    confirm = http.get(link)
    assert confirm.status_code == 200, confirm.text
    done = http.post(
        "/inbox/signin/link",
        data={
            "token": form_field(TOKEN_FIELD, confirm.text),
            "csrf": form_field(CSRF_FIELD, confirm.text),
        },
    )
    assert done.status_code == 303, done.text


def _download(http: httpx.Client, path: str) -> httpx.Response:
    """A download link answers 303 to the API's short-lived signed link."""
    redirect = http.get(path)
    assert redirect.status_code == 303, redirect.text
    response = http.get(redirect.headers["location"])
    assert response.status_code == 200
    return response


@pytest.mark.stack
@pytest.mark.slow
def test_demo_leaves_the_inbox_running_with_a_working_sign_in_link(demo_dir: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ORDERFLOW_")}
    env["ORDERFLOW_DEV_DIR"] = str(demo_dir)
    demo = subprocess.run(
        [sys.executable, "-m", "orderflow_ingest.devstack.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    output = demo.stdout
    # The README's promise (issue 11): a raw download through a signed link, and webhooks
    # arriving at a local receiver whose standardwebhooks check accepts their signatures.
    assert "sha256 equal to the row's" in output, output[-3000:]
    assert re.search(r"^\s+verified evt_\d+: message\.parsed$", output, re.M), output[-3000:]
    assert "failed verification" not in output, output[-3000:]

    stack = Stack.load(demo_dir)
    assert set(stack.ctx.state.processes) >= {"postfix", "deliver", "milter", "worker-1", "api"}
    inbox = _printed(output, "inbox")
    link = _printed(output, "sign in")
    assert inbox == f"{stack.inbox_url}/o/acme"
    assert link.startswith(f"{stack.inbox_url}/signin/link/")
    another = _printed(output, "another link")
    assert another == f"{_cli()} user link demo@acme.example --config {stack.config_path}"

    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        assert http.get("/inbox/o/acme").status_code in (303, 401)  # not signed in yet
        _sign_in(http, link)
        page = http.get("/inbox/o/acme", params={"q": "filename:PO-4711.pdf"})
        assert page.status_code == 200
        assert "Purchase order PO-4711" in page.text
        message_path = re.search(r'href="(/inbox/o/acme/messages/[0-9a-f-]{36})"', page.text)
        assert message_path is not None, page.text[:3000]
        message = http.get(message_path.group(1))
        assert message.status_code == 200
        assert "PO-4711.pdf" in message.text
        row = _message_row(stack, message_path.group(1).rsplit("/", 1)[1])
        raw = _download(http, message_path.group(1) + "/eml").content
        assert hashlib.sha256(raw).hexdigest() == row["sha256"]
        document = re.search(
            r'href="(/inbox/o/acme/documents/[0-9a-f-]{36}/download)"', message.text
        )
        assert document is not None, message.text[:3000]
        assert _download(http, document.group(1)).content.startswith(b"%PDF-")
    # The printed link was single use; the printed command makes another that works.
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        assert "already used or has expired" in http.get(link).text
    fresh = subprocess.run(another.split(), capture_output=True, text=True, env=env, check=False)
    assert fresh.returncode == 0, fresh.stderr
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        _sign_in(http, fresh.stdout.strip())

    refs = [ProcessRef.from_dict(d) for d in stack.ctx.state.processes.values()]
    down = subprocess.run(
        [_cli(), "dev", "down", "--dir", str(demo_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert [ref for ref in refs if ref.alive()] == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.inbox_url}/signin", timeout=5)


def _message_row(stack: Stack, message_id: str) -> dict[str, Any]:
    from orderflow_ingest.db import connect
    from orderflow_ingest.ops import queries

    with connect(stack.settings.database_url) as conn:
        (row,) = queries.resolve(conn, message_id).messages
    return row
