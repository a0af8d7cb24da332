"""A real browser (Debian's Chromium, headless, via Playwright) against a real
Apache: SSO (Basic auth) → role choice → menu, with a screenshot kept as a
test artifact (``$OPENXPKI_TEST_ARTIFACTS``, default ``test-artifacts/``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.browser import screenshot

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


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

        shot = screenshot(page, "browser-login-operator-menu.png")
        assert shot.stat().st_size > 1000

        # Switching back to User runs the handler again and shows the user's menu.
        page.get_by_role("link", name="Switch role").click()
        page.get_by_role("button", name="User").click()
        menu = page.get_by_role("navigation", name="Main menu")
        assert menu.get_by_role("link", name="Personalize SmartCard").is_visible()
        assert menu.get_by_role("link", name="Audit log").count() == 0
    finally:
        context.close()
