"""An escrowed encryption key imported onto a PIV card through the real smartcard stack, and its key history.

pcscd + vpcd + the project's software PIV card (``support/virtual_piv.py``,
which speaks Yubico's key import); the agent's PIV route imports the key
into slot 9d with the management key, proves it by a decryption (RSA) or
ECDH (EC) on the card, and mail a sender wrote with ``openssl cms -encrypt``
to the certificate opens with the card through OpenSSL's PKCS#11 engine and
OpenSC's PIV driver (9d is ID 03 there, retired slot 82 ID 05), as a user's
mail program would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from support.agent import personalize_card
from support.cms import cms_decrypt_on_card, cms_encrypt
from support.pkix import assert_chain_lints_clean
from support.smartcards import OPENSC_MODULE, VirtualCardProcess
from test_key_escrow import escrow_issued, escrowed_settings

from openxpki_py.db.schema import key_escrow
from openxpki_py.escrow.cli import init_escrow_key

pytestmark = pytest.mark.slow
yubikit = pytest.importorskip("yubikit.piv", reason="the agent's [piv] extra is not installed")


def test_escrowed_key_goes_into_slot_9d_and_the_card_decrypts_with_it(
        make_agent_server: Callable[..., tuple[Any, str]], piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    app, url = make_agent_server(escrowed_settings)
    assert init_escrow_key(app.instance.services, only_if_needed=True)
    returncode, err = personalize_card(app, url, piv_card, tmp_path / "state")
    assert returncode == 0, err
    assert "escrowed key 2/2 (encryption) imported onto the card" in err and "done: 2 certificates" in err, err
    record, cert, _ = escrow_issued(app)
    assert record["status"] == "installed"
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo) == bytes(record["public_key_der"])

    # The card says the 9d key was imported (not generated), and it is the certificate's key.
    metadata, _ = _slot(yubikit.SLOT.KEY_MANAGEMENT)
    assert not metadata.generated and metadata.public_key == public

    # Mail to the certificate opens with the card, through OpenSC (PIV 9d = ID 03).
    mail, cert_pem = cms_encrypt(cert, b"minutes of the board meeting", tmp_path)
    assert on_piv(piv_card, b"\x03", mail, cert_pem) == b"minutes of the board meeting"

    # The card is personalized again (a new escrowed key): the previous key moves to retired slot 82.
    returncode, err = personalize_card(app, url, piv_card, tmp_path / "state-2")
    assert returncode == 0, err
    assert f"earlier key 1 (certificate {cert.serial_number:x}" in err and "under ID 82" in err, err
    metadata, retired_cert = _slot(yubikit.SLOT.RETIRED1)
    assert metadata.public_key == public and retired_cert == cert
    # Last year's mail opens with the key in retired slot 82 (OpenSC's ID 05), as a mail program finds it.
    assert on_piv(piv_card, b"\x05", mail, cert_pem) == b"minutes of the board meeting"


def on_piv(card: VirtualCardProcess, key_id: bytes, mail: Path, cert_pem: Path) -> bytes:
    """A mail program on the user's PC: OpenSSL's PKCS#11 engine, OpenSC, pcscd, the card."""
    return cms_decrypt_on_card(mail, cert_pem, module=OPENSC_MODULE, key_id=key_id, pin=card.pin)


def _slot(slot: Any) -> tuple[Any, x509.Certificate]:
    """What the card itself says about a slot (yubikit, next to OpenSC): its metadata and certificate."""
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        piv = yubikit.PivSession(connection)
        return piv.get_slot_metadata(slot), piv.get_certificate(slot)


def test_escrowed_ec_p384_key_goes_into_slot_9d_is_proved_by_ecdh_and_opens_ecdh_mail(
        make_agent_server: Callable[..., tuple[Any, str]], piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    app, url = make_agent_server(lambda s: escrowed_settings(s, key="ec-p384"))
    assert init_escrow_key(app.instance.services, only_if_needed=True)
    returncode, err = personalize_card(app, url, piv_card, tmp_path / "state")
    assert returncode == 0, err
    assert "escrowed key 2/2 (encryption) imported onto the card" in err, err
    record, cert, ca_cert = escrow_issued(app)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement
    assert_chain_lints_clean(ca_cert, cert, tmp_path)
    assert record["status"] == "installed" and record["key_spec"] == "ec-p384"  # the card's ECDH answer counted

    metadata, _ = _slot(yubikit.SLOT.KEY_MANAGEMENT)
    assert not metadata.generated and metadata.public_key == public
    mail, cert_pem = cms_encrypt(cert, b"kari: ECDH with the PIV card", tmp_path)
    assert on_piv(piv_card, b"\x03", mail, cert_pem) == b"kari: ECDH with the PIV card"

    # Personalized again: a new EC key in 9d, the old one in retired slot 82 still opens the old mail.
    returncode, err = personalize_card(app, url, piv_card, tmp_path / "state-2")
    assert returncode == 0 and "under ID 82" in err, err
    assert on_piv(piv_card, b"\x05", mail, cert_pem) == b"kari: ECDH with the PIV card"


def test_a_piv_card_that_takes_no_ec_import_is_refused_with_the_fix(
        make_agent_server: Callable[..., tuple[Any, str]], make_piv_card: Callable[..., VirtualCardProcess],
        tmp_path: Path) -> None:
    app, url = make_agent_server(lambda s: escrowed_settings(s, key="ec-p256"))
    assert init_escrow_key(app.instance.services, only_if_needed=True)
    card = make_piv_card("--no-ec-import")
    returncode, err = personalize_card(app, url, card, tmp_path / "state")
    assert returncode != 0
    assert "cannot take an imported EC P-256 key" in err and "an RSA key for the escrowed type" in err, err
    with app.instance.services.db.connect() as conn:
        assert conn.execute(select(key_escrow.c.status)).scalar_one() != "installed"
