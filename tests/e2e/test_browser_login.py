"""A real browser (Debian's Chromium, headless, via Playwright) against a real
Apache: SSO (Basic auth) → role choice → menu, with a screenshot kept as a
test artifact (``$OPENXPKI_TEST_ARTIFACTS``, default ``test-artifacts/``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("OPENXPKI_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_login_role_choice_menu(apache_site_factory: Callable[..., Any], chromium: Any) -> None:
    grant_bob = REPO / "tests" / "data" / "auth" / "grant-bob"
    site = apache_site_factory(config={"auth": {"roles": {
        "User": {"command": ["/bin/true"]},
        "RA Operator": {"command": [str(grant_bob)]},
    }}})
    context = chromium.new_context(http_credentials={"username": "bob", "password": "secret"},
                                   viewport={"width": 1024, "height": 640})
    try:
        page = context.new_page()
        page.goto(f"{site.base_url}/openxpki/audit")  # a deep page before any role
        assert page.url.startswith(f"{site.base_url}/openxpki/login")
        assert page.get_by_role("heading", name="Choose your role").is_visible()
        assert page.get_by_role("button", name="User").is_visible()

        page.get_by_role("button", name="RA Operator").click()
        page.wait_for_load_state()
        assert page.url == f"{site.base_url}/openxpki/audit"  # the deep link continued
        assert page.get_by_role("heading", name="Audit log").is_visible()

        page.get_by_role("link", name="Home").click()
        menu = page.get_by_role("navigation", name="Main menu")
        assert menu.get_by_role("link", name="Audit log").is_visible()
        assert menu.get_by_role("link", name="Personalize SmartCard").count() == 0
        assert page.locator("#who .role").inner_text() == "RA Operator"

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "browser-login-operator-menu.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000

        # Switching back to User runs the handler again and shows the user's menu.
        page.get_by_role("link", name="Switch role").click()
        page.get_by_role("button", name="User").click()
        menu = page.get_by_role("navigation", name="Main menu")
        assert menu.get_by_role("link", name="Personalize SmartCard").is_visible()
        assert menu.get_by_role("link", name="Audit log").count() == 0
    finally:
        context.close()
