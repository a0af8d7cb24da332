"""The token agent against the WSGI application on a local plain-http server.

Shared by the agent tests (``tests/integration/test_agent_*.py``): the server
is the project's WSGI application (SQLite, CA key in SoftHSM, LDIF directory)
on 127.0.0.1, the browser is alice's, played in-process, and the agent is a
separate process as the user runs it.  What ends up on the card is read
back with OpenSC's pkcs11-tool, an independent reader.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from werkzeug.test import Client

from openxpki_py.web.app import create_app

AGENT = Path(sys.executable).with_name("openxpki-py-token")
PKCS11_TOOL = shutil.which("pkcs11-tool")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
CODE_RE = re.compile(r'<code id="enrollment-code">([A-Z0-9-]+)</code>')
VERSION_RE = re.compile(r'name="version" value="(\d+)"')
AGENT_RE = re.compile(r'name="agent" value="(\d+)"')
PHRASE_RE = re.compile(r'<strong id="pairing-phrase">([a-z ]+)</strong>')
PRINTED_PHRASE_RE = re.compile(r"^pairing phrase: ([a-z ]+)$", re.M)

class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_app(inst: Any, *, wrap: Callable[[Any], Any] | None = None) -> Iterator[tuple[Any, str]]:
    """The instance's WSGI app on a local plain-http server: (app, base URL).

    ``wrap(app)`` is served instead when given (a WSGI wrapper that watches or changes the agent's
    requests); the returned app is the bare one, for the in-process browser.
    """
    app = create_app(inst.config, inst.services)
    app.instance = inst  # type: ignore[attr-defined]
    httpd: WSGIServer = make_server("127.0.0.1", 0, wrap(app) if wrap else app, handler_class=_Quiet)
    # A short poll: shutdown() waits for the loop to notice it (0.5 s by default).
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def make_agent_server(make_instance: Callable[..., Any],
                      sqlite_engine: Any) -> Iterator[Callable[..., tuple[Any, str]]]:
    """``make_agent_server(overrides=None)``: (app, url); ``overrides`` edits the instance settings."""
    with contextlib.ExitStack() as stack:
        def make(overrides: Callable[[dict[str, Any]], None] | None = None) -> tuple[Any, str]:
            return stack.enter_context(serve_app(make_instance(sqlite_engine, overrides=overrides)))

        yield make


@pytest.fixture
def agent_server(make_agent_server: Callable[..., tuple[Any, str]]) -> tuple[Any, str]:
    return make_agent_server()


def personalize_with_agent(inst: Any, token: Any, state_dir: Path) -> Any:
    """A whole personalization of ``token`` for alice with the real agent; returns the app."""
    with serve_app(inst) as (app, url):
        browser = Browser(app)
        wf_id, code = browser.start()
        agent = run_agent(token, url, code, state_dir)
        browser.confirm_when_asked(wf_id)
        out, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
        assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text
        return app


class Browser:
    """Alice's browser behind SSO (in-process)."""

    def __init__(self, app: Any) -> None:
        self.client = Client(app)
        self.env = {"REMOTE_USER": "alice"}

    def get(self, path: str) -> Any:
        return self.client.get(path, environ_overrides=self.env)

    def post(self, path: str, data: dict[str, Any]) -> Any:
        return self.client.post(path, data=data, environ_overrides=self.env)

    def start(self) -> tuple[int, str]:
        page_path = self.get("/deeplink").headers["Location"]
        wf_id = int(page_path.rsplit("/", 1)[1])
        page = self.get(page_path).text
        shown = self.post(f"/personalize/{wf_id}/code", {"csrf_token": _csrf(page), "mode": "deeplink"})
        code = CODE_RE.search(shown.text)
        assert code, shown.text
        return wf_id, code.group(1)

    def phrase_when_asked(self, wf_id: int, timeout: float = 30.0) -> tuple[str, str]:
        """(page, pairing phrase) once the page asks to confirm a card or an agent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page = self.get(f"/deeplink/workflow/{wf_id}").text
            phrase = PHRASE_RE.search(page)
            if phrase and ('id="confirm-card"' in page or 'id="confirm-agent"' in page):
                return page, phrase.group(1)
            time.sleep(0.1)
        raise AssertionError("the page never asked about a card or an agent")

    def answer(self, wf_id: int, page: str, action: str) -> None:
        """Press a button of ``page`` (as loaded), for the agent whose phrase it showed."""
        version, agent = VERSION_RE.search(page), AGENT_RE.search(page)
        assert version and agent, page
        done = self.post(f"/personalize/{wf_id}/action", {
            "csrf_token": _csrf(page), "mode": "deeplink", "action": action, "version": version.group(1),
            "agent": agent.group(1)})
        assert done.status_code == 303, done.text

    def confirm_when_asked(self, wf_id: int, timeout: float = 30.0, *, phrase: str | None = None) -> str:
        """Confirm the card (and the agent's phrase, if given it must be the page's); the page's phrase."""
        page, shown = self.phrase_when_asked(wf_id, timeout)
        assert phrase is None or shown == phrase, (shown, phrase)
        self.answer(wf_id, page, "confirm_token" if 'id="confirm-card"' in page else "confirm_agent")
        return shown


def _csrf(page: str) -> str:
    match = CSRF_RE.search(page)
    assert match, page
    return match.group(1)


def run_agent(token: Any, url: str, code: str, state_dir: Path, *, agent: Path = AGENT,
              timeout: float = 60, source: list[str] | None = None) -> subprocess.Popen[str]:
    """The agent as a user runs it; ``source`` replaces ``--server URL --code CODE`` (e.g. ``--url …``)."""
    env = {**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf), "CARD_PIN": token.pin}
    return subprocess.Popen(
        [str(agent), "enroll", *(source or ["--server", url, "--code", code]), "--module", str(token.module),
         "--token-label", token.label, "--pin-env", "CARD_PIN", "--state-dir", str(state_dir),
         "--insecure-http-for-localhost", "--timeout", str(timeout)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def printed_phrase(agent: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """Read the agent's stderr up to its "pairing phrase:" line (the rest stays in the pipe)."""
    assert agent.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = agent.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = PRINTED_PHRASE_RE.match(line.rstrip("\n"))
        if match:
            return match.group(1)
    raise AssertionError(f"the agent printed no pairing phrase: {''.join(seen)}")


def card_objects(token: Any) -> list[tuple[str, str]]:
    """(class, id) of every object, as pkcs11-tool lists them after a user login."""
    assert PKCS11_TOOL is not None
    listing = subprocess.run(
        [PKCS11_TOOL, "--module", str(token.module), "--token-label", token.label, "--login",
         "--pin", token.pin, "--list-objects"],
        env={**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf)}, capture_output=True, text=True,
        timeout=60, check=True).stdout
    objects, kind = [], ""
    for line in listing.splitlines():
        if re.match(r"^(Private Key|Public Key|Certificate) Object", line):
            kind = line.split(" Object")[0]
        match = re.match(r"^\s+ID:\s+([0-9a-f]+)", line)
        if match and kind:
            objects.append((kind, match.group(1)))
    return sorted(objects)


def run_agent_on_card(card: Any, url: str, code: str, state_dir: Path, *options: str,
                      agent: Path = AGENT) -> subprocess.Popen[str]:
    """The agent on a software card in vpcd's reader (``support.smartcards``), through OpenSC.

    ``card`` is a ``VirtualCardProcess``; ``options`` go to ``enroll`` as given
    (``--card-profile``, ``--so-pin-env CARD_SO_PIN`` …).
    """
    env = {**os.environ, "CARD_PIN": card.pin, "CARD_SO_PIN": card.so_pin}
    env.pop("SOFTHSM2_CONF", None)
    return subprocess.Popen(
        [str(agent), "enroll", "--server", url, "--code", code, "--pin-env", "CARD_PIN",
         "--state-dir", str(state_dir), "--insecure-http-for-localhost", "--timeout", "60", *options],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def personalize_card(app: Any, url: str, card: Any, state_dir: Path, *options: str) -> tuple[int, str]:
    """One personalization of a software card: the agent runs, the user confirms in the browser; (exit code, stderr)."""
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(card, url, code, state_dir, *options)
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    return agent.returncode, err
