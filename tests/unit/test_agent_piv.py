"""The PIV route's pure parts: management key credentials, CHUID and CCC."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from openxpki_py_token.credentials import FACTORY_MANAGEMENT_KEY, CardCredentials
from openxpki_py_token.errors import UsageError
from openxpki_py_token.piv_objects import new_ccc, new_chuid
from openxpki_py_token.secret import SecretRef


def test_management_key_defaults_to_the_factory_key_and_reads_hex(tmp_path: Path) -> None:
    assert CardCredentials().current_management_key() == FACTORY_MANAGEMENT_KEY
    source = tmp_path / "mgmt.hex"
    source.write_text("aa" * 24 + "\n")
    assert CardCredentials(SecretRef("--management-key-file", file=source)).current_management_key() == b"\xaa" * 24
    source.write_text("not hex")
    with pytest.raises(UsageError, match="hex"):
        CardCredentials(SecretRef("--management-key-file", file=source)).current_management_key()


def test_escrow_never_overwrites_and_is_private(tmp_path: Path) -> None:
    target = tmp_path / "new-key.hex"
    credentials = CardCredentials(rotate_to=target)
    credentials.check_rotation_target()
    credentials.escrow(b"\x01" * 24)
    assert target.read_text() == "01" * 24 + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(UsageError, match="exists"):
        credentials.check_rotation_target()


def test_every_chuid_and_ccc_is_new() -> None:
    first, second = new_chuid(), new_chuid()
    assert first != second
    assert first.startswith(b"\x30\x19") and b"\x34\x10" in first and first.endswith(b"\xfe\x00")
    assert new_ccc() != new_ccc()


def test_attest_sends_both_certificates_or_nothing() -> None:
    """A card that cannot attest (no f9 certificate, or a key it did not generate) gives None, not an error."""
    pytest.importorskip("yubikit.piv")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import SLOT

    from openxpki_py_token.pins import CardPins
    from openxpki_py_token.piv_card import PivCard

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attestation")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))

    class Session:
        def __init__(self, f9: bool, attests: bool) -> None:
            self.f9, self.attests = f9, attests
            self.asked: list[SLOT] = []

        def get_certificate(self, slot: SLOT) -> x509.Certificate:
            assert slot == SLOT.ATTESTATION
            if not self.f9:
                raise ApduError(b"", 0x6A82)
            return cert

        def attest_key(self, slot: SLOT) -> x509.Certificate:
            self.asked.append(slot)
            if not self.attests:
                raise ApduError(b"", 0x6A80)
            return cert

    card = PivCard(CardPins(), CardCredentials())
    for f9, attests, expected in ((True, True, True), (False, True, False), (True, False, False)):
        card._session = Session(f9, attests)  # type: ignore[assignment]
        sent = card.attest(b"\x9a")
        assert (sent is not None) == expected, (f9, attests)
        if sent is not None:
            assert sent["format"] == "yubico-piv"
            assert x509.load_pem_x509_certificate(sent["key_certificate"].encode()) == cert
            assert x509.load_pem_x509_certificate(sent["device_certificate"].encode()) == cert
