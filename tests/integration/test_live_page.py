"""The live page at / in a real headless Chromium (Debian's chromium, driven by Playwright):
send an event through the form and see it in the live tail; send an invalid one and see the
400's problems. A screenshot is saved (``LIVE_PAGE_SCREENSHOT`` names where, e.g.
``docs/live-page.png`` to refresh the README's).

The browser must be installed (``scripts/ensure-browser`` does it); a missing one fails the
test, it never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from support.services import Services

#: Exercises no broker behaviour of its own: runs in the Tansu leg only (see .ci/run).
pytestmark = pytest.mark.broker_neutral

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless; a missing binary is a failure naming the fix."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/ensure-browser (apt-get install chromium) or "
            "set CHROMIUM_PATH",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


def send(page: Page, user_id: str, event_type: str, payload: str) -> None:
    page.fill("#userId", user_id)
    page.select_option("#eventType", event_type)
    page.fill("#payload", payload)
    page.click("#send")


def test_the_live_page_sends_events_and_shows_them_live(
    service: Services, browser: Browser, tmp_path: Path
) -> None:
    """The form's events appear in the live tail and the counts; an invalid one shows the
    API's 400 with each problem; the health badge says ok."""
    app = service()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app.base_url + "/")
    expect(page.locator("#stream-state")).to_have_text("live", timeout=10_000)
    expect(page.locator("#health")).to_have_text("ok", timeout=10_000)

    user = f"browser-{uuid.uuid4().hex[:6]}"
    send(page, user, "PRODUCT_VIEW", '{"productId": "sku-1", "price": 9.5}')
    expect(page.locator("#result")).to_contain_text("201: published")
    event_id = page.locator("#result").inner_text().split()[-1]
    row = page.locator(f'#tail tr[data-event-id="{event_id}"]')
    expect(row).to_be_visible(timeout=5_000)
    expect(row).to_contain_text(user)
    send(page, user, "LOGIN", "")
    expect(page.locator("#tail tr")).to_have_count(2, timeout=5_000)
    expect(page.locator('#counts tr[data-event-type="PRODUCT_VIEW"] td').nth(1)).to_have_text("1")

    send(page, "   ", "LOGIN", '{"nested": ')
    expect(page.locator("#result")).to_contain_text("400 invalid_request")
    expect(page.locator("#problems li")).to_contain_text(["body: not valid JSON"])
    send(page, "\u200b", "LOGOUT", "[1]")
    expect(page.locator("#problems li")).to_have_text(
        ["userId: must not be empty", "payload: must be a JSON object"]
    )
    expect(page.locator("#tail tr")).to_have_count(2)

    screenshot = Path(os.environ.get("LIVE_PAGE_SCREENSHOT") or tmp_path / "live-page.png")
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    assert errors == []
    listed = [event["eventId"] for event in app.processed() if event["userId"] == user]
    assert listed[0] == event_id
    assert len(listed) == 2
