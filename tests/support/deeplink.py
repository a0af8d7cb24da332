"""The browser's part of a personalization through an Apache site, without a browser.

``/token`` (the deep link), the enrollment code, then "Is this your card?"
confirmed once the agent reported its card: what alice's page does, as
plain requests of ``site.browser(login)`` (support/apache.py).
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def start_for(site: Any, login: str) -> tuple[Any, str, str]:
    """(browser, the workflow's page path, enrollment code) for ``login``."""
    browser = site.browser(login)
    first = browser.get("/token")
    assert first.status == 303, first.body
    path = first.headers["Location"].replace(site.base_url, "")
    csrf = CSRF_RE.search(browser.get(path).body)
    assert csrf
    shown = browser.post(_actions(path) + "/code", {"csrf_token": csrf.group(1), "mode": "deeplink"})
    code = re.search(r'<code id="enrollment-code">([A-Z0-9-]+)</code>', shown.body)
    assert code, shown.body
    return browser, path, code.group(1)


def confirm_when_asked(browser: Any, path: str, agent: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Confirm the card once the page asks about the agent that found it (or fail when it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent.poll() is None:
        page = browser.get(path).body
        agent_id = re.search(r'name="agent" value="(\d+)"', page)
        if "Is this your card?" in page and agent_id:  # no agent id yet: not asked about this agent yet
            csrf = CSRF_RE.search(page)
            version = re.search(r'name="version" value="(\d+)"', page)
            assert csrf and version
            done = browser.post(_actions(path) + "/action", {
                "csrf_token": csrf.group(1), "version": version.group(1), "mode": "deeplink",
                "action": "confirm_token", "agent": agent_id.group(1)})
            assert done.status == 303, done.body
            return
        time.sleep(0.2)
    raise AssertionError("the page never asked to confirm the card")


def _actions(path: str) -> str:
    return path.replace("/deeplink/workflow/", "/personalize/")
