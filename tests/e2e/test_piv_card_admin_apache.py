"""Per-card admin credentials with every real part: Apache (mod_wsgi-express, Basic auth as the SSO),
the CA key and the card admin master secret in SoftHSM (created by the operator's commands as
Apache's user), the real agent, and the software PIV card through pcscd + vpcd.

After the first personalization the card answers only to the key the server derives (the
factory key is refused); a second personalization of the same card works with it; the values
are in no log file of Apache's, nowhere in the database and not in the agent's output.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.agent import Browser, run_agent_on_card
from support.smartcards import VirtualCardProcess

pytestmark = pytest.mark.slow
pytest.importorskip("yubikit.piv", reason="the agent's [piv] extra is not installed")

BIN = Path(sys.executable).parent
FACTORY_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")


class _Answer:
    """What support.agent.Browser reads of a response, from an Apache HTTPResult."""

    def __init__(self, result: Any) -> None:
        self.text = result.body
        self.headers = result.headers
        self.status_code = result.status


class ApacheBrowser(Browser):
    """alice's browser against the Apache site (Basic auth stands in for the SSO)."""

    def __init__(self, site: Any) -> None:  # noqa: D107 - no in-process app here
        self.http = site.browser("alice")

    def get(self, path: str) -> Any:
        return _Answer(self.http.get(_mounted(path)))

    def post(self, path: str, data: dict[str, Any]) -> Any:
        return _Answer(self.http.post(_mounted(path), {k: str(v) for k, v in data.items()}))


def _mounted(path: str) -> str:
    return path if path.startswith("/openxpki/") else "/openxpki" + path


def _operator(site: Any, *args: str) -> str:
    done = subprocess.run([str(BIN / "openxpki-py"), "--config", str(site.config_path), *args],
                          capture_output=True, text=True, timeout=120, user="www-data", check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _authenticates(key: bytes) -> bool:
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import ApduError, SmartCardConnection
    from yubikit.piv import PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        piv = PivSession(connection)
        try:
            piv.authenticate(key)
        except (ApduError, ValueError):
            return False
        return True


def _card_serial() -> str:
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        return str(PivSession(connection).get_serial())


def test_piv_card_admin_credentials_through_apache(apache_site_factory: Callable[..., Any],
                                                   make_token: Callable[..., Any],
                                                   piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    ca_token = make_token("piv-admin-ca", owner="www-data")

    def edit(root: Path, cfg: dict[str, Any]) -> None:
        cfg["ca"] = ca_token.ca_settings(root, "CN=PIV Admin CA,O=Example Corp,C=DE")
        cfg["directory"]["required"] = ["cn", "mail", "upn"]
        cfg["web"]["deep_link"] = {"workflow": "smartcard_personalization", "role": "User"}
        cfg["workflow"] = {}
        cfg["personalization"] = {"certificates": [
            {"type": "authentication", "profile": "smartcard_logon", "key": "ec-p256", "key_id": "01"}]}
        cfg["card_admin"] = {"enabled": True}

    site = apache_site_factory(edit_config=edit, processes=1, threads=4)
    _operator(site, "ca", "init")
    assert "CKA_NEVER_EXTRACTABLE: True" in _operator(site, "ca", "card-admin-init")

    outputs = []
    for run in ("first", "second"):
        browser = ApacheBrowser(site)
        wf_id, code = browser.start()
        agent = run_agent_on_card(piv_card, f"{site.base_url}/openxpki", code, tmp_path / run,
                                  "--card-profile", "piv", "-v")
        browser.confirm_when_asked(wf_id)
        out, err = agent.communicate(timeout=180)
        assert agent.returncode == 0, err + site.error_log()
        assert "done: 1 certificate on the card" in err
        outputs.append(out + err)
    assert "factory admin credentials were replaced" in outputs[0]
    assert "replaced" not in outputs[1]

    # The card: the factory key is refused, the derived one (asked of the HSM here) accepted.
    from openxpki_py.config import load_config
    from openxpki_py.crypto.card_admin import CardAdminSecret

    secret = CardAdminSecret.from_config(load_config(site.config_path).card_admin)
    try:
        derived = secret.card_admin_credentials("piv", _card_serial())
    finally:
        secret.close()
    key, puk = derived.values["management_key"], derived.values["puk"]
    assert isinstance(key, bytes) and isinstance(puk, str)
    assert not _authenticates(FACTORY_KEY) and _authenticates(key)

    # Audited twice (once per personalization), never the values: not in the database, logs, output.
    released = [r for r in site.audit() if r["event"] == "card.admin_credentials"]
    assert [r["outcome"] for r in released] == ["ok", "ok"]
    dump = site.read_db(lambda conn: "\n".join(conn.connection.driver_connection.iterdump()))
    logs = "".join(p.read_text(errors="replace") for p in site.server_root.glob("*_log"))
    for text in (dump, logs, *outputs):
        for value in (key.hex(), key.hex().upper(), puk):
            assert value not in text
