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
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from support.agent import PKCS11_TOOL, Browser, card_objects, printed_phrase, run_agent

from openxpki_py.db.schema import certificate


def _issued(app: Any) -> list[x509.Certificate]:
    with app.instance.services.db.connect() as conn:
        rows = conn.execute(select(certificate.c.der)).all()
    return [x509.load_der_x509_certificate(bytes(r.der)) for r in rows]


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_agent_personalizes_a_token_through_the_api(agent_server: tuple[Any, str], make_token: Any,
                                                    tmp_path: Path) -> None:
    app, url = agent_server
    token = make_token("alice-card", pin="482913")
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent(token, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id, phrase=printed_phrase(agent))  # the page shows what the agent printed
    assert agent.stdout is not None and agent.stderr is not None
    with agent:  # what printed_phrase left on the pipes; closes them
        err = agent.stderr.read()
        out = agent.stdout.read()
        agent.wait(timeout=120)
    assert agent.returncode == 0, err
    assert "done: 2 certificates on the card" in err
    assert token.pin not in out + err
    assert card_objects(token) == [("Certificate", "01"), ("Certificate", "02"), ("Private Key", "01"),
                                    ("Private Key", "02"), ("Public Key", "01"), ("Public Key", "02")]
    assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text
    _assert_certificates_match_card(app, token)


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_killed_agent_continues_without_issuing_twice(agent_server: tuple[Any, str], make_token: Any,
                                                      tmp_path: Path) -> None:
    app, url = agent_server
    token = make_token("alice-card-2")
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent(token, url, code, tmp_path / "state")
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

    again = run_agent(token, url, code, tmp_path / "state")  # the same command, the same code
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "continuing the personalization for alice" in err
    assert "generating key 1/2" not in err  # key 1 was certified in the first run
    assert len(_issued(app)) == 2
    assert [o for o in card_objects(token) if o[0] == "Private Key"] == [("Private Key", "01"),
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
