"""An escrowed encryption key imported onto a PIV card through the real smartcard stack, and its key history.

pcscd + vpcd + the project's software PIV card (``support/virtual_piv.py``,
which speaks Yubico's key import); the agent's PIV route imports the key
into slot 9d with the management key, proves it by a decryption on the card,
and OpenSC's PKCS#11 module (9d is ID 03 there) decrypts mail to the
certificate with the card, as a user's mail program would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import select
from support.agent import Browser, run_agent_on_card
from support.smartcards import OPENSC_MODULE, VirtualCardProcess
from test_key_escrow import escrowed_settings

from openxpki_py.db.schema import certificate, key_escrow
from openxpki_py.escrow.cli import init_escrow_key

pytestmark = pytest.mark.slow
yubikit = pytest.importorskip("yubikit.piv", reason="the agent's [piv] extra is not installed")


def test_escrowed_key_goes_into_slot_9d_and_the_card_decrypts_with_it(
        make_agent_server: Callable[..., tuple[Any, str]], piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    app, url = make_agent_server(escrowed_settings)
    assert init_escrow_key(app.instance.services, only_if_needed=True)
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(piv_card, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "escrowed key 2/2 (encryption) imported onto the card" in err and "done: 2 certificates" in err, err

    with app.instance.services.db.connect() as conn:
        record = conn.execute(select(key_escrow)).mappings().one()
        cert = x509.load_der_x509_certificate(bytes(conn.execute(select(certificate.c.der).where(
            certificate.c.profile == "encryption")).scalar_one()))
    assert record["status"] == "installed"
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo) == bytes(record["public_key_der"])

    # The card says the 9d key was imported (not generated), and it is the certificate's key.
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import SLOT, PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        metadata = PivSession(connection).get_slot_metadata(SLOT.KEY_MANAGEMENT)
    assert not metadata.generated and metadata.public_key == public

    # Mail to the certificate opens with the card, through OpenSC (PIV 9d = ID 03).
    message = b"minutes of the board meeting"
    (tmp_path / "mail.bin").write_bytes(public.encrypt(message, padding.PKCS1v15()))
    subprocess.run(["pkcs11-tool", "--module", str(OPENSC_MODULE), "--login", "--pin", piv_card.pin,
                    "--decrypt", "--mechanism", "RSA-PKCS", "--id", "03", "--input-file", str(tmp_path / "mail.bin"),
                    "--output-file", str(tmp_path / "mail.out")], capture_output=True, timeout=60, check=True)
    assert (tmp_path / "mail.out").read_bytes() == message

    # The card is personalized again (a new escrowed key): the previous key moves to retired slot 82.
    wf_id, code = browser.start()
    agent = run_agent_on_card(piv_card, url, code, tmp_path / "state-2")
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert f"earlier key 1 (certificate {cert.serial_number:x}" in err and "under ID 82" in err, err
    with device.open_connection(SmartCardConnection) as connection:
        piv = PivSession(connection)
        assert piv.get_slot_metadata(SLOT.RETIRED1).public_key == public
        assert piv.get_certificate(SLOT.RETIRED1) == cert
        piv.verify_pin(piv_card.pin)
        old_mail = public.encrypt(b"last year's mail", padding.PKCS1v15())
        assert piv.decrypt(SLOT.RETIRED1, old_mail, padding.PKCS1v15()) == b"last year's mail"
