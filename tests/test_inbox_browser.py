"""The web inbox in a real browser (Playwright driving Debian's /usr/bin/chromium), as a person
uses it: sign in through the emailed link, search by filename, open the order, download the
.eml (its sha256 equals the stored object's), reprocess as operator and watch the status
change, be refused as viewer. Screenshots of every page at 1280 and 390 px go to the test's
tmp dir. Every wait is on a condition (expect / wait_for / expect_download), never a sleep."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import send_mail
from inbox_support import (
    WEBHOOKS_ON_LOOPBACK,
    add_user,
    clear_rate_limits,
    inbox_server,
    smtp_sink,
)
from ops_support import cli, run_worker, wait_status
from psycopg.rows import dict_row
from samples import address, minimal_pdf, order_email
from support_wait import wait_for
from webhook_receiver import Receiver
from webhook_support import drop_endpoints, record_events, running_dispatcher, webhook_settings

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser tests need /usr/bin/chromium: run scripts/install-system-deps",
    ),
]
OPERATOR = "olga@acme-browser.test"
STAFF = "sam@orderflow-browser.test"
VIEWER = "victor@acme-browser.test"
WAIT_MS = 60_000  # generous: the CI machine is shared; every wait ends as soon as it holds
WIDTHS = (1280, 390)


@pytest.fixture(scope="module")
def world(stack: Any, settings: Any) -> Iterator[dict[str, Any]]:
    filename = f"PO-BR-{uuid.uuid4().hex[:8]}.pdf"
    subject = f"Order {filename[:-4]}"
    message = order_email(
        subject=subject, attachments=[(filename, "application/pdf", minimal_pdf())]
    )
    send_mail(stack, message, [address("acme")])
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as db:
        wait_status(db, message["Message-ID"], ("STORED",))
        run_worker(stack)
        row = wait_status(db, message["Message-ID"], ("PARSED",))
    add_user(stack, OPERATOR, "acme:operator")
    add_user(stack, VIEWER, "acme:viewer")
    staff = cli(stack, "user", "add", STAFF, "--platform-admin")
    assert staff.returncode == 0, staff.stderr
    with smtp_sink() as sink, inbox_server(stack, sink, WEBHOOKS_ON_LOOPBACK) as base:
        yield {
            "base": base,
            "sink": sink,
            "stack": stack,
            "row": row,
            "filename": filename,
            "subject": subject,
            "redis_url": settings.redis_url,
        }


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def shoot(page: Any, shots: Path, name: str) -> None:
    """The page at each width, full length, for a reviewer."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def sign_in(
    page: Any,
    world: dict[str, Any],
    who: str,
    shots: Path | None = None,
    landing: str = "**/inbox/o/acme",
) -> None:
    from playwright.sync_api import expect

    clear_rate_limits(world["redis_url"])
    sink = world["sink"]
    seen = len(sink.for_address(who))
    page.goto(f"{world['base']}/inbox/signin")
    if shots:
        shoot(page, shots, "1-signin")
    page.get_by_label("Email address").fill(who)
    page.get_by_role("button", name="Email me a sign-in link").click()
    expect(page.get_by_role("status")).to_contain_text("If that address has an account")
    if shots:
        shoot(page, shots, "2-link-sent")
    page.goto(sink.wait_link(who, seen))
    expect(page.get_by_role("heading", name="Sign in to the orderflow inbox")).to_be_visible()
    if shots:
        shoot(page, shots, "3-confirm")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(landing)
    expect(page.get_by_text(who)).to_be_visible()


def test_browser_operator_signs_in_by_link_searches_downloads_and_reprocesses(
    world: dict[str, Any], page: Any, tmp_path: Path, s3: Any, settings: Any
) -> None:
    from playwright.sync_api import expect

    shots = tmp_path / "screenshots"
    shots.mkdir()
    sign_in(page, world, OPERATOR, shots)
    shoot(page, shots, "4-inbox")

    page.get_by_label("Search").fill(f"filename:{world['filename']}")
    page.get_by_label("Search").press("Enter")
    rows = page.locator("table.messages tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(world["subject"])
    shoot(page, shots, "5-search")

    page.get_by_role("link", name=world["subject"]).click()
    expect(page.get_by_role("heading", name=world["subject"])).to_be_visible()
    expect(page.locator("#status")).to_have_text("parsed")
    expect(page.locator("td.filename")).to_have_text(world["filename"])
    shoot(page, shots, "6-message")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download .eml").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".eml")
    raw = Path(download.path()).read_bytes()
    stored = s3.get_object(Bucket=settings.s3_bucket, Key=world["row"]["raw_storage_key"])
    assert hashlib.sha256(raw).hexdigest() == hashlib.sha256(stored["Body"].read()).hexdigest()

    page.get_by_role("button", name="Reprocess").click()
    expect(page.get_by_role("status")).to_have_text("Sent back for reprocessing.")
    expect(page.locator("#status")).to_have_text("stored")
    run_worker(world["stack"])
    page.reload()
    expect(page.locator("#status")).to_have_text("parsed")
    expect(page.locator(".timeline")).to_contain_text("Sent back for reprocessing")
    shoot(page, shots, "7-reprocessed")

    page.get_by_role("navigation", name="Orgs").get_by_role("link", name="acme", exact=True).click()
    page.wait_for_url("**/inbox/o/acme")
    page.get_by_role("link", name="Events", exact=True).click()
    expect(page.get_by_role("heading", name="Events")).to_be_visible()
    shoot(page, shots, "8-events")

    page.goto(f"{world['base']}/inbox/o/acme?q=colour%3Ared")
    expect(page.get_by_role("alert")).to_contain_text("unknown filter colour:")
    shoot(page, shots, "9-search-error")
    for name in ("1-signin", "4-inbox", "6-message", "8-events"):
        for width in WIDTHS:
            assert (shots / f"{name}-{width}.png").stat().st_size > 1000
    print(f"\nscreenshots in {shots}")


def test_browser_viewer_sees_no_reprocess_and_is_refused(
    world: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    sign_in(page, world, VIEWER)
    page.goto(f"{world['base']}/inbox/o/acme/keys")
    refusal = page.get_by_role("heading", name="Only admins of acme manage its API keys.")
    expect(refusal).to_be_visible()
    shoot(page, tmp_path, "error-403")
    page.goto(f"{world['base']}/inbox/o/acme/messages/{world['row']['id']}")
    expect(page.get_by_role("heading", name=world["subject"])).to_be_visible()
    expect(page.get_by_role("button", name="Reprocess")).to_have_count(0)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    response = page.request.post(
        f"{world['base']}/inbox/o/acme/messages/{world['row']['id']}/reprocess",
        form={"csrf": csrf},
        max_redirects=0,
    )
    assert response.status == 403
    assert "may not reprocess" in response.text()


def test_browser_platform_admin_picks_an_org_and_creates_a_key_shown_once(
    world: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    sign_in(page, world, STAFF, landing="**/inbox/")
    expect(page.get_by_role("heading", name="Your orgs")).to_be_visible()
    shoot(page, tmp_path, "orgs")
    page.get_by_role("main").get_by_role("link", name="Acme", exact=True).click()
    page.wait_for_url("**/inbox/o/acme")
    page.get_by_role("link", name="API keys", exact=True).click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.get_by_label("Name").fill("browser-key")
    page.get_by_label("raw:read").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret")
    expect(secret).to_have_text(re.compile(r"^ofi_live_[0-9A-Za-z]{38}$"))
    shoot(page, tmp_path, "keys-created")
    shown = secret.inner_text()
    page.goto(f"{world['base']}/inbox/o/acme/keys")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    expect(page.locator("#secret")).to_have_count(0)
    assert shown not in page.content()
    page.get_by_role("button", name="Revoke browser-key").click()
    row = page.locator("table.keys tbody tr", has_text="browser-key")
    expect(row).to_contain_text("revoked")
    shoot(page, tmp_path, "keys")


def test_browser_org_admin_adds_a_webhook_sees_it_deliver_redelivers_and_deletes_it(
    world: dict[str, Any], page: Any, tmp_path: Path, db: Any
) -> None:
    from playwright.sync_api import expect

    wh = webhook_settings(world["stack"])
    org_id = str(world["row"]["org_id"])
    receiver = Receiver()
    try:
        sign_in(page, world, STAFF, landing="**/inbox/")
        page.get_by_role("main").get_by_role("link", name="Acme", exact=True).click()
        page.wait_for_url("**/inbox/o/acme")
        page.get_by_role("link", name="Webhooks", exact=True).click()
        expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
        shoot(page, tmp_path, "webhooks-empty")
        # The SSRF rules hold here as in the API: a link-local address is refused.
        page.get_by_label("Endpoint URL").fill("http://169.254.169.254/latest/meta-data")
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.get_by_role("alert")).to_contain_text("Refused:")
        shoot(page, tmp_path, "webhooks-refused")
        page.get_by_label("Endpoint URL").fill(receiver.url("/browser-hook"))
        page.get_by_label("Event types").fill("message.parsed")
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.locator("#secret")).to_have_text(re.compile(r"^whsec_[A-Za-z0-9+/=]{40,}$"))
        shown = page.locator("#secret").inner_text()
        shoot(page, tmp_path, "webhooks-created")
        page.get_by_role("link", name="Open the endpoint").click()
        expect(page.get_by_role("heading", name=receiver.url("/browser-hook"))).to_be_visible()
        assert shown not in page.content()
        with running_dispatcher(wh):
            [event_id] = record_events(wh, org_id, 1, "message.parsed")
            wait_for(lambda: receiver.requests, 30, "the delivery")
            wait_for(
                lambda: db.execute(
                    "SELECT 1 FROM webhook_delivery WHERE event_id = %s AND status = 'delivered'",
                    (event_id,),
                ).fetchone(),
                30,
                "the delivery marked delivered",
            )
            page.reload()
            row = page.locator("table.deliveries tbody tr", has_text=f"evt_{event_id}")
            expect(row).to_contain_text("delivered")
            expect(row).to_contain_text("HTTP 200")
            shoot(page, tmp_path, "webhook-deliveries")
            row.get_by_role("button", name=f"Redeliver evt_{event_id}").click()
            expect(page.get_by_role("status")).to_contain_text("Delivery queued again")
            wait_for(lambda: len(receiver.requests) >= 2, 30, "the redelivery")
        assert receiver.requests[1].webhook_id == f"evt_{event_id}"
        page.get_by_role("button", name="Disable").click()
        expect(page.locator("#health")).to_contain_text("disabled")
        shoot(page, tmp_path, "webhook-disabled")
        page.get_by_role("button", name="Enable").click()
        expect(page.locator("#health")).not_to_contain_text("disabled")
        page.get_by_role("button", name="Delete").click()
        page.wait_for_url("**/inbox/o/acme/webhooks")
        expect(page.get_by_text("No endpoints yet.")).to_be_visible()
    finally:
        drop_endpoints(wh, org_id)
        receiver.close()


def test_browser_platform_admin_view_lists_orgs_and_is_hidden_from_others(
    world: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    sign_in(page, world, STAFF, landing="**/inbox/")
    page.get_by_role("link", name="All orgs").click()
    page.wait_for_url("**/inbox/admin")
    expect(page.get_by_role("heading", name="All orgs")).to_be_visible()
    acme = page.locator("table.orgs-admin tbody tr").filter(
        has=page.get_by_role("link", name="Acme", exact=True)
    )
    expect(acme.locator("td[data-label='state']")).to_have_text("active")
    expect(acme.locator("td[data-label='last 24 h']")).not_to_have_text("0")
    shoot(page, tmp_path, "admin")
    acme.get_by_role("link", name="Acme").click()
    page.wait_for_url("**/inbox/o/acme")
    page.context.clear_cookies()
    sign_in(page, world, OPERATOR)
    expect(page.get_by_role("link", name="All orgs")).to_have_count(0)
    page.goto(f"{world['base']}/inbox/admin")
    expect(page.get_by_role("heading", name="No such page.")).to_be_visible()


def test_browser_new_mail_shows_without_a_reload(
    world: dict[str, Any], page: Any, tmp_path: Path, db: Any
) -> None:
    from playwright.sync_api import expect

    page.clock.install()  # the poll's timer runs on this clock; fetch and the server are real
    sign_in(page, world, OPERATOR)
    expect(page.locator("#live")).to_be_empty()
    subject = f"Live order {uuid.uuid4().hex[:8]}"
    message = order_email(subject=subject)
    send_mail(world["stack"], message, [address("acme")])
    wait_status(db, message["Message-ID"], ("STORED", "PARSED"))
    page.clock.run_for(16_000)
    link = page.get_by_role("link", name=re.compile(r"^1 new message — show$"))
    expect(link).to_be_visible()
    shoot(page, tmp_path, "new-mail")
    expect(page.get_by_role("link", name=subject)).to_have_count(0)
    link.click()
    expect(page.get_by_role("link", name=subject)).to_be_visible()
    expect(page.locator("#live")).to_be_empty()
