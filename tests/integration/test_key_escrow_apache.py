"""An escrowed encryption key through every real part: Apache (mod_wsgi-express), the operator CLI as
www-data, the key-recovery key in SoftHSM, the real agent on a SoftHSM card, OpenSC and OpenSSL.

alice personalizes her card through Apache; the card decrypts what was
encrypted to her encryption certificate; two Key Recovery Officers release
the key with ``openxpki-py escrow …`` (one alone cannot) to alice, who
collects it through Apache; the PKCS#12 opens (OpenSSL) the same mail.  Neither the database nor Apache's log holds
the plaintext key.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import select
from support.agent import PKCS11_TOOL, run_agent
from support.cms import cms_encrypt
from support.deeplink import confirm_when_asked, start_for
from test_key_escrow import ESCROWED, key_forms, on_card

from openxpki_py.db.schema import certificate, key_escrow

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")


@pytest.fixture
def escrow_site(apache_site_factory: Callable[..., Any], make_token: Callable[..., Any]) -> Any:
    ca_token = make_token("escrow-ca", owner="www-data")

    def edit(root: Path, cfg: dict[str, Any]) -> None:
        cfg["ca"] = ca_token.ca_settings(root, "CN=Escrow Test CA,O=Example Corp,C=DE")
        cfg["directory"]["required"] = ["cn", "mail", "upn"]
        cfg["web"]["deep_link"] = {"workflow": "smartcard_personalization", "role": "User"}
        cfg["workflow"] = {}
        cfg["personalization"] = {"certificates": ESCROWED}

    site = apache_site_factory(edit_config=edit, processes=2, threads=4,
                               envvars={"SOFTHSM2_CONF": str(ca_token.softhsm.conf)})
    init = _cli(site, "ca", "init")
    assert init.returncode == 0, init.stderr
    assert "key-recovery key created" in init.stderr  # ca init makes it when a type is escrowed
    return site


def _cli(site: Any, *args: str, actor: str = "cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "openxpki-py"), "--config", str(site.config_path), "--actor", actor, *args],
                          capture_output=True, text=True, timeout=120, user="www-data", check=False,
                          env={**os.environ, "HOME": str(site.root)})


def test_lost_card_story_through_apache_and_the_cli(escrow_site: Any, make_token: Any, tmp_path: Path) -> None:
    site = escrow_site
    status = _cli(site, "escrow", "status")
    assert status.returncode == 0, status.stderr
    assert "extractable: False" in status.stdout and "never_extractable: True" in status.stdout

    card = make_token("alice-card", pin="482913", owner="www-data")  # same SoftHSM folder as the CA's token
    browser, path, code = start_for(site, "alice")
    agent = run_agent(card, f"{site.base_url}/openxpki", code, tmp_path / "state", timeout=120)
    try:
        confirm_when_asked(browser, path, agent)
        out, err = agent.communicate(timeout=180)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    assert "escrowed key 2/2 (encryption) imported onto the card" in err and "done: 2 certificates" in err
    assert "Your card is ready." in browser.get(path).body

    record, cert = site.read_db(lambda conn: (
        conn.execute(select(key_escrow)).mappings().one(),
        x509.load_der_x509_certificate(bytes(conn.execute(select(certificate.c.der).where(
            certificate.c.profile == "encryption")).scalar_one()))))
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo) == bytes(record["public_key_der"])

    # Mail to alice's encryption certificate opens with her card: S/MIME written by openssl cms, opened
    # through OpenSSL's PKCS#11 engine as a mail program would.
    message = b"the quarterly figures"
    (tmp_path / "mail.bin").write_bytes(public.encrypt(message, padding.PKCS1v15()))
    mail, cert_pem = cms_encrypt(cert, message, tmp_path)
    assert on_card(card, b"\x02", mail, cert_pem) == message

    # The card is lost: two Key Recovery Officers release the key; one alone cannot, nor alice herself.
    started = _cli(site, "escrow", "recover", str(record["id"]), "--reason", "card lost, ticket 4711", actor="carol")
    assert started.returncode == 0, started.stderr
    recovery = re.search(r"recovery workflow (\d+): PENDING_APPROVAL", started.stdout)
    assert recovery, started.stdout
    wf = recovery.group(1)
    p12_path = site.root / "alice.p12"
    assert _cli(site, "escrow", "approve", wf, actor="carol").returncode == 0
    alone = _cli(site, "escrow", "release", wf, actor="carol")
    assert alone.returncode != 0 and "PENDING_APPROVAL" in alone.stderr
    twice = _cli(site, "escrow", "approve", wf, actor="carol")
    assert twice.returncode != 0 and "approval.same_person" in twice.stderr
    own = _cli(site, "escrow", "approve", wf, actor="alice")
    assert own.returncode != 0 and "recovery.own_key" in own.stderr
    second = _cli(site, "escrow", "approve", wf, actor="dave")
    assert second.returncode == 0 and "APPROVED" in second.stdout, second.stderr
    released = _cli(site, "escrow", "release", wf, actor="dave")
    assert released.returncode == 0, released.stderr
    assert f"recovery workflow {wf}: READY_FOR_OWNER; alice collects the key" in released.stdout
    again = _cli(site, "escrow", "release", wf, actor="dave")
    assert again.returncode != 0  # released once

    # alice collects it in her own session through Apache: the PKCS#12 and the password shown to her once.
    mine = browser.get("/openxpki/certificates")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', mine.body)
    assert csrf and f'action="/openxpki/certificates/recovered/{wf}"' in mine.body, mine.body
    collected = browser.post(f"/openxpki/certificates/recovered/{wf}", {"csrf_token": csrf.group(1), "confirm": "yes"})
    assert collected.status == 200 and collected.headers["Cache-Control"] == "no-store", collected.body
    password = re.search(r'id="pkcs12-password">([^<]+)<', collected.body)
    p12 = re.search(r'href="data:application/x-pkcs12;base64,([A-Za-z0-9+/=]+)"', collected.body)
    assert password and p12
    p12_path.write_bytes(base64.b64decode(p12.group(1)))
    opened = subprocess.run(["openssl", "pkcs12", "-in", str(p12_path), "-passin", f"pass:{password.group(1)}",
                             "-nocerts", "-noenc"], capture_output=True, text=True, timeout=60, check=False)
    assert opened.returncode == 0, opened.stderr
    key = serialization.load_pem_private_key(opened.stdout[opened.stdout.index("-----BEGIN"):].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.decrypt((tmp_path / "mail.bin").read_bytes(), padding.PKCS1v15()) == message
    twice = browser.post(f"/openxpki/certificates/recovered/{wf}", {"csrf_token": csrf.group(1), "confirm": "yes"})
    assert twice.status == 409 and "collected this key already" in twice.body  # collected once

    history = _cli(site, "escrow", "list", "--owner", "alice", "--json")
    assert '"status": "installed"' in history.stdout and "wrapped" not in history.stdout

    # The plaintext key: not in the database, not in Apache's log, not in what the agent or the CLI printed.
    from test_key_escrow_api import database_dump

    from openxpki_py.db.engine import open_engine

    engine = open_engine(f"sqlite:///{site.db_path}")
    try:
        dump = database_dump(engine)
    finally:
        engine.dispose()
    assert bytes(record["wrapped_key"]).hex()[:64] in dump.lower()
    printed = out + err + site.error_log() + "".join(
        r.stdout + r.stderr for r in (init_output(site), started, second, released, history))
    for name, form in key_forms(key).items():
        assert form not in dump, f"the private key ({name}) is in the database"
        assert form not in printed, f"the private key ({name}) is in a log or output"
    assert password.group(1) not in dump and password.group(1) not in printed


def init_output(site: Any) -> subprocess.CompletedProcess[str]:
    return _cli(site, "escrow", "status")
