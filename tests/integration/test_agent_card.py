"""The installed ``openxpki-py-token`` command against the real personalization API.

The agent runs as the user would run it (the console script, a separate
process) on a SoftHSM "card"; the server is the project's WSGI application
(SQLite, CA key in SoftHSM, LDIF directory) behind a plain-http server on
127.0.0.1, and the browser is played in-process.  What ends up on the card
is checked with OpenSC's pkcs11-tool, an independent reader.

A real card through pcscd and OpenSC, through Apache, is the e2e suite's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from werkzeug.test import Client

from openxpki_py.db.schema import certificate
from openxpki_py.web.app import create_app

AGENT = Path(sys.executable).with_name("openxpki-py-token")
PKCS11_TOOL = shutil.which("pkcs11-tool")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
CODE_RE = re.compile(r'<code id="enrollment-code">([A-Z0-9-]+)</code>')
VERSION_RE = re.compile(r'name="version" value="(\d+)"')

pytestmark = pytest.mark.skipif(not AGENT.is_file(), reason="openxpki-py-token is not installed in this venv")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(make_instance: Callable[..., Any], sqlite_engine: Any) -> Iterator[tuple[Any, str]]:
    inst = make_instance(sqlite_engine)
    app = create_app(inst.config, inst.services)
    app.instance = inst  # type: ignore[attr-defined]
    httpd: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    # A short poll: shutdown() waits for the loop to notice it (0.5 s by default).
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


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


def _agent(token: Any, url: str, code: str, state_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf), "CARD_PIN": token.pin}
    return subprocess.Popen(
        [str(AGENT), "enroll", "--server", url, "--code", code, "--module", str(token.module),
         "--token-label", token.label, "--pin-env", "CARD_PIN", "--state-dir", str(state_dir),
         "--insecure-http-for-localhost", "--timeout", "60"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _card_objects(token: Any) -> list[tuple[str, str]]:
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


def _issued(app: Any) -> list[x509.Certificate]:
    with app.instance.services.db.connect() as conn:
        rows = conn.execute(select(certificate.c.der)).all()
    return [x509.load_der_x509_certificate(bytes(r.der)) for r in rows]


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_agent_personalizes_a_token_through_the_api(server: tuple[Any, str], make_token: Any,
                                                    tmp_path: Path) -> None:
    app, url = server
    token = make_token("alice-card", pin="482913")
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = _agent(token, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "done: 2 certificates on the card" in err
    assert token.pin not in out + err
    assert _card_objects(token) == [("Certificate", "01"), ("Certificate", "02"), ("Private Key", "01"),
                                    ("Private Key", "02"), ("Public Key", "01"), ("Public Key", "02")]
    assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text
    _assert_certificates_match_card(app, token)


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_killed_agent_continues_without_issuing_twice(server: tuple[Any, str], make_token: Any,
                                                      tmp_path: Path) -> None:
    app, url = server
    token = make_token("alice-card-2")
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = _agent(token, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id)
    assert agent.stderr is not None
    seen = []
    for line in agent.stderr:  # kill -9 right after the first certificate was issued
        seen.append(line)
        if line.startswith("CSR sent; certificate issued"):
            agent.send_signal(signal.SIGKILL)
            break
    agent.communicate(timeout=30)  # reaps it and closes the pipes
    assert agent.returncode == -signal.SIGKILL, "".join(seen)

    again = _agent(token, url, code, tmp_path / "state")  # the same command, the same code
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "continuing the personalization for alice" in err
    assert "generating key 1/2" not in err  # key 1 was certified in the first run
    assert len(_issued(app)) == 2
    assert [o for o in _card_objects(token) if o[0] == "Private Key"] == [("Private Key", "01"),
                                                                          ("Private Key", "02")]
    _assert_certificates_match_card(app, token)


def _assert_certificates_match_card(app: Any, token: Any) -> None:
    """Each issued certificate is on the card, with the CKA_ID of its key."""
    assert PKCS11_TOOL is not None
    env = {**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf)}
    issued = {c.serial_number: c for c in _issued(app)}
    assert len(issued) == 2
    for key_id in ("01", "02"):
        der = subprocess.run(
            [PKCS11_TOOL, "--module", str(token.module), "--token-label", token.label, "--read-object",
             "--type", "cert", "--id", key_id], env=env, capture_output=True, timeout=60, check=True).stdout
        cert = x509.load_der_x509_certificate(der)
        assert issued[cert.serial_number] == cert
        public = subprocess.run(
            [PKCS11_TOOL, "--module", str(token.module), "--token-label", token.label, "--read-object",
             "--type", "pubkey", "--id", key_id], env=env, capture_output=True, timeout=60, check=True).stdout
        assert serialization.load_der_public_key(public) == cert.public_key()
