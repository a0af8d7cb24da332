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

class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_app(inst: Any) -> Iterator[tuple[Any, str]]:
    """The instance's WSGI app on a local plain-http server: (app, base URL)."""
    app = create_app(inst.config, inst.services)
    app.instance = inst  # type: ignore[attr-defined]
    httpd: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
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

    def confirm_when_asked(self, wf_id: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page = self.get(f"/deeplink/workflow/{wf_id}").text
            if "Is this your card?" in page:
                version = VERSION_RE.search(page)
                assert version
                done = self.post(f"/personalize/{wf_id}/action", {
                    "csrf_token": _csrf(page), "mode": "deeplink", "action": "confirm_token",
                    "version": version.group(1)})
                assert done.status_code == 303, done.text
                return
            time.sleep(0.1)
        raise AssertionError("the agent never reported the card")


def _csrf(page: str) -> str:
    match = CSRF_RE.search(page)
    assert match, page
    return match.group(1)


def run_agent(token: Any, url: str, code: str, state_dir: Path, *, agent: Path = AGENT) -> subprocess.Popen[str]:
    env = {**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf), "CARD_PIN": token.pin}
    return subprocess.Popen(
        [str(agent), "enroll", "--server", url, "--code", code, "--module", str(token.module),
         "--token-label", token.label, "--pin-env", "CARD_PIN", "--state-dir", str(state_dir),
         "--insecure-http-for-localhost", "--timeout", "60"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
