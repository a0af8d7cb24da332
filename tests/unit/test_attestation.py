"""Key attestation: the verifier (crypto/attestation.py) and the personalization's policy on it.

The chains are built here with cryptography the way a YubiKey's looks:
vendor root → (intermediate) → the card's slot f9 certificate → the per-key
attestation certificate with Yubico's extensions.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from openxpki_py.configreader import Reader
from openxpki_py.crypto.attestation import (
    OID_FIRMWARE,
    OID_FORM_FACTOR,
    OID_POLICY,
    OID_SERIAL,
    AttestationRefused,
    AttestationTrust,
    load_certificate,
    verify_key_attestation,
)
from openxpki_py.errors import ConfigError
from openxpki_py.personalization.attestation import CARD_ATTESTED, CARD_UNATTESTED, key_origin
from openxpki_py.personalization.policy import parse_personalization_config

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
CardKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: CardKey, issuer: str, issuer_key: CardKey, *, ca: bool | None = True,
          not_before: datetime.datetime = NOW - DAY, not_after: datetime.datetime = NOW + 3650 * DAY,
          extensions: tuple[tuple[x509.ObjectIdentifier, bytes], ...] = ()) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


YUBIKEY_EXTENSIONS = ((OID_FIRMWARE, bytes((5, 4, 3))), (OID_SERIAL, bytes((0x02, 0x04, 0x01, 0x2C, 0xCF, 0x2B))),
                      (OID_POLICY, bytes((2, 1))), (OID_FORM_FACTOR, bytes((0x83,))))
SERIAL = str(0x012CCF2B)


@dataclass
class Chain:
    root_key: CardKey
    root: x509.Certificate
    device_key: CardKey
    device: x509.Certificate
    card_key: CardKey
    key_cert: x509.Certificate

    @property
    def trust(self) -> AttestationTrust:
        return AttestationTrust(roots=(self.root,))


@pytest.fixture(scope="module")
def chain() -> Chain:
    root_key = rsa.generate_private_key(65537, 2048)  # Yubico's PIV roots are RSA
    root = _cert("Vendor PIV Root CA", root_key, "Vendor PIV Root CA", root_key)
    device_key = ec.generate_private_key(ec.SECP256R1())
    device = _cert("Vendor PIV Attestation 19713835", device_key, "Vendor PIV Root CA", root_key, ca=None)
    card_key = ec.generate_private_key(ec.SECP256R1())
    key_cert = _cert("YubiKey PIV Attestation 9a", card_key, device.subject.rfc4514_string().split("=", 1)[1],
                     device_key, ca=None, extensions=YUBIKEY_EXTENSIONS)
    return Chain(root_key, root, device_key, device, card_key, key_cert)


def _refused(code: str, chain: Chain, *, key_cert: x509.Certificate | None = None,
             device: x509.Certificate | None = None, trust: AttestationTrust | None = None,
             public_key: object = None, now: datetime.datetime = NOW) -> AttestationRefused:
    with pytest.raises(AttestationRefused) as refused:
        verify_key_attestation(key_cert or chain.key_cert, device or chain.device,
                               public_key or chain.card_key.public_key(),  # type: ignore[arg-type]
                               trust or chain.trust, now)
    assert refused.value.code == code, refused.value.message
    return refused.value


def test_good_chain_gives_the_cards_facts(chain: Chain) -> None:
    attested = verify_key_attestation(chain.key_cert, chain.device, chain.card_key.public_key(), chain.trust, NOW)
    assert (attested.serial, attested.firmware, attested.pin_policy, attested.touch_policy,
            attested.form_factor) == (SERIAL, "5.4.3", "once", "never", "usb-c-keychain")
    assert attested.root == "CN=Vendor PIV Root CA"
    record = attested.as_record()
    assert record["format"] == "yubico-piv" and len(record["key_certificate_sha256"]) == 64


def test_chain_through_configured_intermediate(chain: Chain) -> None:
    """Newer YubiKeys: the f9 certificate is issued by a vendor intermediate, not the root."""
    middle_key = ec.generate_private_key(ec.SECP384R1())
    middle = _cert("Vendor PIV Attestation B 1", middle_key, "Vendor PIV Root CA", chain.root_key)
    device = _cert("Vendor PIV Attestation 19713835", chain.device_key, "Vendor PIV Attestation B 1", middle_key,
                   ca=None)
    _refused("attestation.chain", chain, device=device)  # the intermediate is not configured
    trust = AttestationTrust(roots=(chain.root,), intermediates=(middle,))
    assert verify_key_attestation(chain.key_cert, device, chain.card_key.public_key(), trust, NOW).serial == SERIAL


def test_wrong_root_is_refused(chain: Chain) -> None:
    other_key = rsa.generate_private_key(65537, 2048)
    other = _cert("Other Root", other_key, "Other Root", other_key)
    assert "does not lead to a configured attestation root" in _refused(
        "attestation.chain", chain, trust=AttestationTrust(roots=(other,))).message
    _refused("attestation.chain", chain, trust=AttestationTrust())


def test_root_with_the_same_name_but_another_key_is_refused(chain: Chain) -> None:
    """A forger's "Vendor PIV Root CA": the name matches, the signature does not."""
    forger = rsa.generate_private_key(65537, 2048)
    fake_root = _cert("Vendor PIV Root CA", forger, "Vendor PIV Root CA", forger)
    fake_device = _cert("Vendor PIV Attestation 1", chain.device_key, "Vendor PIV Root CA", forger, ca=None)
    _refused("attestation.chain", chain, device=fake_device)
    _refused("attestation.chain", chain, trust=AttestationTrust(roots=(fake_root,)))


def test_forged_self_signed_key_certificate_is_refused(chain: Chain) -> None:
    """A script's software key "attested" by itself, with the real card's f9 certificate beside it."""
    software_key = ec.generate_private_key(ec.SECP256R1())
    forged = _cert("YubiKey PIV Attestation 9a", software_key, "Vendor PIV Attestation 19713835", software_key,
                   ca=None, extensions=YUBIKEY_EXTENSIONS)
    assert "not signed by the card's attestation key" in _refused(
        "attestation.chain", chain, key_cert=forged, public_key=software_key.public_key()).message


def test_self_signed_device_certificate_is_refused(chain: Chain) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    device = _cert("Vendor PIV Attestation 19713835", forger, "Vendor PIV Attestation 19713835", forger, ca=None)
    key_cert = _cert("YubiKey PIV Attestation 9a", chain.card_key, "Vendor PIV Attestation 19713835", forger,
                     ca=None, extensions=YUBIKEY_EXTENSIONS)
    _refused("attestation.chain", chain, key_cert=key_cert, device=device)


def test_attested_key_must_be_the_csr_key(chain: Chain) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    assert "did not make this key" in _refused("attestation.key_mismatch", chain,
                                               public_key=other.public_key()).message


def test_expired_links_are_refused(chain: Chain) -> None:
    old_key_cert = _cert("YubiKey PIV Attestation 9a", chain.card_key, "Vendor PIV Attestation 19713835",
                         chain.device_key, ca=None, not_before=NOW - 20 * DAY, not_after=NOW - 10 * DAY,
                         extensions=YUBIKEY_EXTENSIONS)
    _refused("attestation.expired", chain, key_cert=old_key_cert)
    _refused("attestation.expired", chain, now=NOW + 4000 * DAY)  # the whole chain ran out
    _refused("attestation.expired", chain, now=NOW - 2 * DAY)  # not yet valid


def test_malformed_certificates_and_extensions(chain: Chain) -> None:
    for text in ("not a certificate", base64.b64encode(b"\x30\x03\x02\x01\x01").decode(),
                 "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(AttestationRefused) as refused:
            load_certificate(text, "key attestation certificate")
        assert refused.value.code == "attestation.malformed"
    der = base64.b64encode(chain.key_cert.public_bytes(serialization.Encoding.DER)).decode()
    assert load_certificate(der, "key attestation certificate") == chain.key_cert
    for oid, bad in ((OID_SERIAL, b"\x04\x02\x01\x02"), (OID_FIRMWARE, b"\x05\x04"), (OID_POLICY, b"\x01")):
        broken = _cert("YubiKey PIV Attestation 9a", chain.card_key, "Vendor PIV Attestation 19713835",
                       chain.device_key, ca=None, extensions=((oid, bad),))
        _refused("attestation.malformed", chain, key_cert=broken)


# --- the personalization's policy ------------------------------------------------------------


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _origin(chain: Chain, attestation: dict[str, str] | None, *, required: bool = False,
            serial: str = SERIAL) -> tuple[str, dict[str, str] | None]:
    return key_origin(attestation, public_key=chain.card_key.public_key(), required=required,
                      cert_type="authentication", card_serial=serial, trust=chain.trust, now=NOW)


def test_key_origin_follows_the_policy(chain: Chain) -> None:
    sent = {"format": "yubico-piv", "key_certificate": _pem(chain.key_cert), "device_certificate": _pem(chain.device)}
    origin, facts = _origin(chain, sent, required=True)
    assert origin == CARD_ATTESTED and facts is not None and facts["serial"] == SERIAL
    assert _origin(chain, None) == (CARD_UNATTESTED, None)
    with pytest.raises(AttestationRefused) as refused:
        _origin(chain, None, required=True)
    assert refused.value.code == "csr.attestation_required" and "require_attestation" in refused.value.message
    # The card's serial is the one the card's maker vouches for, not only the agent's word.
    with pytest.raises(AttestationRefused) as refused:
        _origin(chain, sent, serial="12345678")
    assert refused.value.code == "attestation.serial_mismatch"
    # An attestation that does not verify is refused even where none is required (never downgraded).
    with pytest.raises(AttestationRefused) as refused:
        _origin(chain, {**sent, "device_certificate": _pem(chain.root)})
    assert refused.value.code == "attestation.chain"
    with pytest.raises(AttestationRefused) as refused:
        _origin(chain, {**sent, "format": "tpm"})
    assert refused.value.code == "attestation.malformed"


def test_policy_config_requires_roots_for_required_attestation(chain: Chain, tmp_path: Path) -> None:
    certificates = [{"type": "authentication", "profile": "smartcard_logon", "key_id": "01",
                     "require_attestation": True}]
    with pytest.raises(ConfigError, match=r"personalization\.attestation\.roots"):
        parse_personalization_config(Reader({"certificates": certificates}, "personalization", tmp_path))
    (tmp_path / "roots.pem").write_text(_pem(chain.root))
    policy = parse_personalization_config(Reader(
        {"certificates": certificates, "attestation": {"roots": ["roots.pem"]}}, "personalization", tmp_path))
    assert policy.certificates[0].require_attestation and policy.attestation.roots == (chain.root,)
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        parse_personalization_config(Reader(
            {"certificates": certificates, "attestation": {"roots": ["empty.pem"]}}, "personalization", tmp_path))
