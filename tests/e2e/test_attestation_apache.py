"""Key attestation end to end: Apache (mod_wsgi) + the real agent + the virtual PIV card through pcscd + vpcd.

The site requires attestation for the logon certificate and trusts the
virtual card's test attestation root (``piv_attestation_ca``, standing in
for Yubico's PIV roots): the agent reads the card's attestation, the
application under Apache verifies it, and the certificate is stored as
``card-attested``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from support.agent import run_agent_on_card
from support.smartcards import VirtualCardProcess
from support.deeplink import confirm_when_asked, start_for
from test_personalization_e2e import BIN

from openxpki_py.db.engine import open_engine
from openxpki_py.db.schema import audit_log, certificate

pytestmark = pytest.mark.slow
pytest.importorskip("yubikit.piv", reason="the agent's [piv] extra is not installed")



@pytest.fixture
def attesting_site(apache_site_factory: Callable[..., Any], make_token: Callable[..., Any],
                   piv_attestation_ca: tuple[Path, Path]) -> Any:
    """A site (SQLite, CA key in SoftHSM, LDIF directory) whose logon certificates need attested keys."""
    ca_token = make_token("attest-ca", owner="www-data")

    def edit(root: Path, cfg: dict[str, Any]) -> None:
        roots = root / "attestation-roots.pem"
        shutil.copy(piv_attestation_ca[1], roots)  # Apache's www-data must read it
        cfg["ca"] = ca_token.ca_settings(root, "CN=Attestation Test CA,O=Example Corp,C=DE")
        cfg["web"]["deep_link"] = {"workflow": "smartcard_personalization", "role": "User"}
        cfg["workflow"] = {}
        cfg["personalization"] = {
            "certificates": [
                {"type": "authentication", "profile": "smartcard_logon", "key": "ec-p256", "key_id": "01",
                 "require_attestation": True},
                {"type": "encryption", "profile": "encryption", "key": "ec-p256", "key_id": "02",
                 "usage": "decrypt"},
            ],
            "attestation": {"roots": [str(roots)]},
        }

    site = apache_site_factory(edit_config=edit)
    init = subprocess.run([str(BIN / "openxpki-py"), "--config", str(site.config_path), "ca", "init"],
                          capture_output=True, text=True, timeout=120, user="www-data", check=False)
    assert init.returncode == 0, init.stderr
    return site


def test_attested_piv_keys_through_apache(attesting_site: Any, piv_card: VirtualCardProcess,
                                          tmp_path: Path) -> None:
    site = attesting_site
    browser, path, code = start_for(site, "alice")
    agent = run_agent_on_card(piv_card, f"{site.base_url}/openxpki", code, tmp_path / "state")
    confirm_when_asked(browser, path, agent)
    _, err = agent.communicate(timeout=180)
    assert agent.returncode == 0, err + site.error_log()
    assert "done: 2 certificates on the card" in err and "the card attests that it generated the key" in err, err
    assert "Your card is ready." in browser.get(path).body

    engine = open_engine(f"sqlite:///{site.db_path}")
    try:
        with engine.connect() as conn:
            origins = sorted(r.key_origin for r in conn.execute(
                select(certificate.c.key_origin).where(certificate.c.owner == "alice")))
            attested = [r.details for r in conn.execute(
                select(audit_log.c.details).where(audit_log.c.event == "key.attested"))]
    finally:
        engine.dispose()
        site.read_db(lambda conn: None)  # hands the SQLite files back to www-data
    assert origins == ["card-attested", "card-attested"]
    assert len(attested) == 2 and all(d["firmware"] == "5.4.3" and d["serial"].isdigit() for d in attested)
