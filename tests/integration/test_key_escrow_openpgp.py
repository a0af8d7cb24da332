"""An escrowed encryption key imported onto an OpenPGP card's decryption slot through the real smartcard stack.

pcscd + vpcd + the software OpenPGP v3.4 card (``support/virtual_openpgp.py``),
OpenSC's PKCS#11 module (whose OpenPGP driver turns ``C_CreateObject`` into
the card's own key import, PUT DATA 4D, under the admin PIN), the installed
agent and the project's server.  The decryption key cannot sign, so no CSR
could ever put a key there; an escrowed key needs none.  Mail a sender
wrote with ``openssl cms -encrypt`` opens with the card through OpenSSL's
PKCS#11 engine, as a user's mail program would.  The card has one
decryption slot: no key history on it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from openxpki_py_token.apdu import OPENPGP_AID, command
from openxpki_py_token.openpgp_import import _find, _PcscCard, v4_fingerprint
from support.agent import Browser, personalize_card, run_agent_on_card
from support.cms import cms_decrypt_on_card, cms_encrypt
from support.smartcards import OPENSC_MODULE, VirtualCardProcess
from test_agent_openpgp_card import _section
from test_key_escrow import escrow_issued, escrowed_settings

from openxpki_py.db.schema import audit_log, key_escrow
from openxpki_py.escrow.cli import init_escrow_key

pytestmark = pytest.mark.slow
OPENPGP_USER_TOKEN = "OpenPGP card (User PIN)"
READER = "Virtual PCD 00 00"


def _with_card_admin(settings: dict[str, Any]) -> None:
    """The shipped two types (encryption escrowed), the card's admin PIN derived by the server."""
    escrowed_settings(settings)
    settings["card_admin"] = {"enabled": True}


def test_escrowed_key_goes_into_the_openpgp_decryption_slot_and_opens_mail(
        make_agent_server: Callable[..., tuple[Any, str]], openpgp_card: VirtualCardProcess, tmp_path: Path) -> None:
    app, url = make_agent_server(_with_card_admin)
    assert init_escrow_key(app.instance.services, only_if_needed=True)
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(openpgp_card, url, code, tmp_path / "state")
    page, _ = browser.phrase_when_asked(wf_id)  # the plan, before the user confirms: no more "not on this card"
    assert "encryption certificate, rsa-2048 key made on the server (escrowed) and imported onto the card " \
           "(the card has one slot for it" in page, page
    assert "Not on this card" not in page, page
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "escrowed key 2/2 (encryption) imported onto the card" in err and "done: 2 certificates" in err, err
    record, cert, _ = escrow_issued(app)
    assert record["status"] == "installed"  # the card decrypted the server's RSA-OAEP challenge
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)

    # OpenSC's view: the decryption key (ID 02) is the certificate's key.  (OpenSC 0.23 flags every
    # OpenPGP key "local, neverExtract", imported or not: where it came from is the escrow record's.)
    dump = subprocess.run(["pkcs15-tool", "-D"], capture_output=True, text=True, timeout=60, check=True).stdout
    key = _section(dump, "Private RSA Key [Encryption key]")
    assert re.search(r"ID\s+: 02\b", key) and "decrypt" in key, key
    der = subprocess.run(["pkcs11-tool", "--module", str(OPENSC_MODULE), "--read-object", "--type", "pubkey",
                          "--id", "02"], capture_output=True, timeout=60, check=True).stdout
    assert serialization.load_der_public_key(der) == public

    # What GnuPG and OpenSC read to see the key: its generation date (CD) and v4 fingerprint (C5) for slot 2.
    dates, fingerprints = _card_data_objects(0xCD, 0xC5)
    assert fingerprints[20:40] == v4_fingerprint(public, int.from_bytes(dates[4:8], "big"))

    # Mail to the certificate opens with the card (OpenSC: the decryption key is ID 02, in the slot
    # of the user PIN PW1 for decryption, not the signature PIN's).
    mail, cert_pem = cms_encrypt(cert, b"minutes of the board meeting", tmp_path)
    assert cms_decrypt_on_card(mail, cert_pem, module=OPENSC_MODULE, token_label=OPENPGP_USER_TOKEN, key_id=b"\x02",
                               pin=openpgp_card.pin) == b"minutes of the board meeting"

    # Personalized again (a replacement card would be the same): a new escrowed key replaces the one in slot 02.
    # The card has no other slot for the earlier key, so the server sends none (the plan said so) and the
    # agent imports none; last year's mail then needs the key's recovery (docs/key-escrow.md), not this card.
    returncode, err = personalize_card(app, url, openpgp_card, tmp_path / "state-2")
    assert returncode == 0, err
    assert "escrowed key 2/2 (encryption) imported onto the card" in err and "earlier key" not in err, err
    with app.instance.services.db.connect() as conn:
        assert conn.execute(select(key_escrow.c.status).order_by(key_escrow.c.id)).scalars().all() == \
            ["installed", "installed"]
        deliveries = conn.execute(select(audit_log.c.details).where(audit_log.c.event == "escrow.deliver")
                                  .order_by(audit_log.c.id)).scalars().all()
    assert [d["history"] for d in deliveries] == [[], []]  # no earlier key was ever sent to this card


def _card_data_objects(*tags: int) -> list[bytes]:
    """Data objects of the card's application related data (6E), read over PC/SC as GnuPG would."""
    with _PcscCard(READER, "the OpenPGP card") as card:
        card.send(command(0xA4, 0x04, 0x00, OPENPGP_AID), "SELECT")
        data = card.send(command(0xCA, 0x00, 0x6E, le=True), "GET DATA 6E")
    found = [_find(data, tag) for tag in tags]
    assert all(value is not None for value in found), data.hex()
    return [value for value in found if value is not None]
