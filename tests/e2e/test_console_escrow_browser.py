"""Escrowed-key recovery in Chromium through Apache (mod_wsgi-express, Basic auth as the SSO).

The key-recovery key is in SoftHSM; an escrowed key and its certificate are
made by the server's own escrow service (as www-data, as the site runs).
carol asks for the recovery and approves, dave approves and releases it to
alice, and sees nothing of the key; alice sees on "My certificates" that her
key is escrowed and that the recovered key waits for her, collects it, and the
PKCS#12 Chromium downloads opens with the password her page showed once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from support.browser import screenshot

BIN = Path(sys.executable).parent
KRO = "Key Recovery Officer"
USERS = {name: "secret" for name in ("alice", "carol", "dave")}

ESCROWED = [
    {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01", "usage": "sign"},
    {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02", "usage": "decrypt",
     "key_origin": "escrowed"},
]

pytestmark = pytest.mark.slow

MAKE_ESCROWED_KEY = """
import sys
from openxpki_py.config import load_config
from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.db.schema import key_escrow
from openxpki_py.services import Services
from openxpki_py_token.keyspec import KeySpec

svc = Services(load_config(sys.argv[1]))
with svc.db.begin() as conn:
    key = svc.escrow.generate(conn, owner="alice", cert_type="encryption", profile="encryption",
                              spec=KeySpec.parse("rsa-2048"), workflow_id=None, actor="test", role="System")
    issued = svc.ca.issue_certificate(conn, IssuanceRequest(
        csr=key.csr_pem.encode(), profile="encryption", owner="alice", requester="test",
        subject_attributes=svc.directory.find_user("alice").certificate_values(), key_origin="server-escrowed"))
    conn.execute(key_escrow.update().where(key_escrow.c.id == key.id)
                 .values(status="installed", certificate_serial=issued.serial))
print(key.id, issued.serial)
svc.close()
"""


@pytest.fixture
def escrow_site(apache_site_factory: Callable[..., Any], make_token: Callable[..., Any]) -> Any:
    ca_token = make_token("escrow-web-ca", owner="www-data")

    def edit(root: Path, cfg: dict[str, Any]) -> None:
        cfg["ca"] = ca_token.ca_settings(root, "CN=Escrow Web CA,O=Example Corp,C=DE")
        cfg["directory"]["required"] = ["cn", "mail", "upn"]
        cfg["personalization"] = {"certificates": ESCROWED}
        cfg["auth"]["roles"] = {"User": {"command": ["/bin/true"]},
                                KRO: {"command": ["/bin/true"], "users": ["carol", "dave"]}}

    env = {"SOFTHSM2_CONF": str(ca_token.softhsm.conf)}
    site = apache_site_factory(edit_config=edit, users=USERS, envvars=env)
    site.env = {**os.environ, **env, "HOME": str(site.root)}
    init = _run(site, str(BIN / "openxpki-py"), "--config", str(site.config_path), "ca", "init")
    assert "key-recovery key created" in init.stderr
    return site


def _run(site: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, user="www-data", check=False,
                          env=site.env)
    assert done.returncode == 0, done.stderr
    return done


def _as(chromium: Any, user: str) -> Any:
    context = chromium.new_context(http_credentials={"username": user, "password": "secret"},
                                   viewport={"width": 1200, "height": 900}, accept_downloads=True)
    return context.new_page()


def _officer(chromium: Any, site: Any, user: str, path: str) -> Any:
    page = _as(chromium, user)
    page.goto(f"{site.base_url}/openxpki{path}")
    page.get_by_role("button", name=KRO).click()
    page.wait_for_load_state()
    assert page.url.startswith(f"{site.base_url}/openxpki{path}")
    return page


def test_two_officers_release_an_escrowed_key_and_its_owner_collects_it(escrow_site: Any, chromium: Any,
                                                              tmp_path: Path) -> None:
    site = escrow_site
    made = _run(site, str(BIN / "python"), "-c", MAKE_ESCROWED_KEY, str(site.config_path)).stdout.split()
    escrow_id, serial = int(made[0]), made[1]

    carol = _officer(chromium, site, "carol", "/console/escrow")
    row = carol.locator(f'#escrow-records tr[data-escrow-id="{escrow_id}"]')
    assert serial in row.inner_text() and "installed" in row.inner_text()
    row.get_by_role("link", name=str(escrow_id)).click()
    carol.fill("#reason", "card lost, ticket 4711")
    carol.get_by_role("button", name="Request recovery").click()
    assert "waiting for two Key Recovery Officers" in carol.locator("#console-message").inner_text()
    carol.get_by_role("button", name="Approve").click()
    assert "1 of 2 approvals" in carol.locator("#console-message").inner_text()
    assert carol.get_by_role("button", name="Approve").count() == 0  # not twice

    dave = _officer(chromium, site, "dave", "/console/escrow")
    assert "card lost, ticket 4711" in dave.locator("#escrow-recoveries").inner_text()
    screenshot(dave, "console-escrow-recovery.png")
    dave.get_by_role("button", name="Approve").click()
    assert "2 of 2 approvals (APPROVED)" in dave.locator("#console-message").inner_text()
    dave.get_by_label("release to alice now").check()
    dave.get_by_role("button", name="Release to alice").click()
    assert "released to alice, who collects the key" in dave.locator("#console-message").inner_text()
    assert dave.locator("#pkcs12-password").count() == 0 and dave.locator("#download-pkcs12").count() == 0
    assert "waiting for alice to collect it" in dave.locator("#record-recoveries").inner_text()

    # alice, in her own session: "My certificates" says a key waits for her; she collects it once.
    alice = _as(chromium, "alice")
    alice.goto(f"{site.base_url}/openxpki/certificates")
    mark = alice.locator(f'tr[data-serial="{serial}"] td.key-escrow').inner_text()
    assert mark == "escrowed (recoverable)"
    waiting = alice.locator("#my-recovered-keys")
    assert "released by dave" in waiting.inner_text()
    screenshot(alice, "my-certificates-recovered-key.png")
    alice.get_by_label("I am ready to save the file and note its password").check()
    alice.get_by_role("button", name="Collect my encryption key").click()
    password = alice.locator("#pkcs12-password").inner_text().strip()
    with alice.expect_download() as info:
        alice.locator("#download-pkcs12").click()
    target = tmp_path / "alice.p12"
    info.value.save_as(str(target))
    assert info.value.suggested_filename == "alice-encryption-recovered.p12"
    key, cert, _ = pkcs12.load_key_and_certificates(target.read_bytes(), password.encode())
    assert key is not None and cert is not None and format(cert.serial_number, "x") == serial
    alice.goto(f"{site.base_url}/openxpki/certificates")  # shown once: nothing waits any more
    assert alice.locator("#my-recovered-keys").count() == 0 and password not in alice.content()

    dave.reload()  # the officers see that she collected it, never what she received
    assert "collected by alice at" in dave.locator("#record-recoveries").inner_text()
    assert password not in dave.content()
