"""The agent's card layer on SoftHSM: logins, keys, CSR signatures, certificates, profiles."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openxpki_py_token.card import Card, spec_text
from openxpki_py_token.card_objects import der_integer
from openxpki_py_token.card_profiles import GENERIC, OPENPGP, PIV, choose_profile
from openxpki_py_token.card_tasks import build_csr
from openxpki_py_token.errors import UsageError
from openxpki_py_token.keyspec import KeySpec
from openxpki_py_token.pins import CardPins
from openxpki_py_token.secret import SecretRef
from pkcs11 import Attribute

from openxpki_py.errors import TokenError, TokenModuleError, TokenNotFound, TokenPinError


def _card(token: Any, pin: str | None = None, so_pin: str | None = None) -> Card:
    pins = CardPins(user=SecretRef("--pin-file", file=token.write_pin(pin=pin)),
                    so=SecretRef("--so-pin-file", file=token.write_pin(
                        token.softhsm.base / f"{token.label}.so", pin=so_pin or token.so_pin)))
    return Card(token.module, pins, token_label=token.label)


def _self_signed(key: Any, name: str = "Alice") -> x509.Certificate:
    """A certificate for ``key`` signed by a throw-away CA (the card only stores it)."""
    ca = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
            .public_key(key).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca, hashes.SHA256()))


def test_card_info_and_login_switching(make_token: Any, pkcs11_session_leak_check: None) -> None:
    token = make_token("card-info")
    with _card(token) as card:
        assert card.info is not None
        assert card.info.label == "card-info" and card.info.model == "SoftHSM v2"
        assert card.info.manufacturer == "SoftHSM project" and len(card.info.serial) == 16
        card.login("user")
        card.login("so")  # logs the user out first: PKCS#11 allows one role at a time
        card.login("user")
        assert card.find_key(b"\x01") is None


def test_wrong_pin_is_refused_once_and_not_retried(make_token: Any, pkcs11_session_leak_check: None) -> None:
    token = make_token("card-wrong-pin")
    card = _card(token, pin="000000")
    with card, pytest.raises(TokenPinError, match="refused the PIN") as raised:
        card.login("user")
    assert "000000" not in raised.value.message
    assert "user" not in card.pins._known  # forgotten, never tried again silently


def test_wrong_so_pin(make_token: Any) -> None:
    token = make_token("card-wrong-so")
    card = _card(token, so_pin="99999999")
    with card, pytest.raises(TokenPinError, match=r"refused the SO \(admin\) PIN"):
        card.login("so")


def test_missing_module_is_a_token_error(tmp_path: Path) -> None:
    card = Card(tmp_path / "nope.so", CardPins())
    with pytest.raises(TokenModuleError, match="does not exist"):
        card.open()


@pytest.mark.parametrize(("spec", "usage", "expect"), [
    (KeySpec("rsa", rsa_bits=2048), "sign", {"SIGN": True, "DECRYPT": False, "UNWRAP": False, "DERIVE": False}),
    (KeySpec("rsa", rsa_bits=2048), "decrypt", {"SIGN": True, "DECRYPT": True, "UNWRAP": True, "DERIVE": False}),
    (KeySpec("ec", curve="P-256"), "sign", {"SIGN": True, "DERIVE": False}),
    (KeySpec("ec", curve="P-384"), "decrypt", {"SIGN": True, "DERIVE": True}),
])
def test_generated_keys_never_leave_the_card_and_sign_a_csr(
        make_token: Any, spec: KeySpec, usage: Any, expect: dict[str, bool],
        pkcs11_session_leak_check: None) -> None:
    token = make_token("card-keygen")
    with _card(token) as card:
        card.generate_key(spec, b"\x07", "test key", usage, login="user")
        key = card.find_key(b"\x07")
        assert key is not None and key.spec == spec and key.label == "test key" and key.can_sign
        names = (Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE,
                 Attribute.ALWAYS_SENSITIVE, Attribute.PRIVATE, Attribute.TOKEN, Attribute.SIGN,
                 Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE)
        attrs = {k.name: v for k, v in card.key_attributes(b"\x07", names).items()}
        assert attrs["SENSITIVE"] and attrs["NEVER_EXTRACTABLE"] and attrs["ALWAYS_SENSITIVE"]
        assert attrs["PRIVATE"] and attrs["TOKEN"] and not attrs["EXTRACTABLE"]
        for name, value in expect.items():
            assert bool(attrs[name]) is value, name
        pem = build_csr(card, key, "authentication")
        csr = x509.load_pem_x509_csr(pem.encode())
        assert csr.is_signature_valid and csr.public_key() == key.public_key
        # The private half is a cryptography key that refuses to be exported.
        with pytest.raises(TokenError, match="never leaves"):
            card.private_key(key).private_numbers()


def test_keys_survive_reinitialising_the_module(make_token: Any, pkcs11_session_leak_check: None) -> None:
    token = make_token("card-reinit")
    with _card(token) as card:
        card.generate_key(KeySpec("ec", curve="P-256"), b"\x03", "auth", "sign", login="user")
        card.reinitialize()
        key = card.find_key(b"\x03")  # logs in again after the re-initialisation
        assert key is not None
        assert x509.load_pem_x509_csr(build_csr(card, key, "authentication").encode()).is_signature_valid


def test_certificate_is_written_next_to_its_key_and_replaces_an_older_one_only_if_asked(
        make_token: Any, pkcs11_session_leak_check: None) -> None:
    token = make_token("card-cert")
    with _card(token) as card:
        card.generate_key(KeySpec("rsa", rsa_bits=2048), b"\x01", "auth", "sign", login="user")
        key = card.find_key(b"\x01")
        assert key is not None
        old, new, newer = (_self_signed(key.public_key, name) for name in ("Old", "New", "Newer"))
        card.write_certificate(old, b"\x01", "authentication", login="user", replace=False)
        card.write_certificate(new, b"\x01", "authentication", login="user", replace=True)
        assert card.certificates(b"\x01") == [new]
        assert card.certificates(b"\x02") == []
        # Without replace (a generic token), what is on the card stays.
        card.write_certificate(newer, b"\x01", "authentication", login="user", replace=False)
        assert sorted(c.subject.rfc4514_string() for c in card.certificates(b"\x01")) == [
            "CN=New", "CN=Newer"]


def test_der_integer_is_minimal_two_complement() -> None:
    assert der_integer(0) == bytes.fromhex("020100")
    assert der_integer(0x7F) == bytes.fromhex("02017f")
    assert der_integer(0x80) == bytes.fromhex("02020080")
    assert der_integer(0x1234) == bytes.fromhex("02021234")
    big = (1 << 159) | 5  # a 20-byte serial with the top bit set needs a leading zero
    assert der_integer(big)[:2] == bytes((0x02, 21))


def test_spec_text() -> None:
    assert spec_text(KeySpec("rsa", rsa_bits=3072)) == "RSA-3072"
    assert spec_text(KeySpec("ec", curve="P-384")) == "EC P-384"


def test_profile_choice() -> None:
    assert choose_profile("auto", ("OpenPGP card (User PIN)", "PKCS#15 emulated", "ZeitControl")) is OPENPGP
    assert choose_profile("auto", ("alice", "SoftHSM v2", "SoftHSM project")) is GENERIC
    assert choose_profile("generic", ("OpenPGP card (User PIN)",)) is GENERIC
    # OpenSC's view of a PIV card picks the PIV profile (whose route then asks for the [piv] extra).
    assert choose_profile("auto", ("PIV_II", "PKCS#15 emulated", "piv_II")) is PIV
    assert PIV.route == "piv" and OPENPGP.route == GENERIC.route == "pkcs11"
    with pytest.raises(UsageError):
        choose_profile("smartcard-hsm", ())


def test_openpgp_slots() -> None:
    assert OPENPGP.needs_so_pin and not GENERIC.needs_so_pin
    assert OPENPGP.slot_for("authentication", "sign").key_id == "03"  # type: ignore[union-attr]
    assert OPENPGP.slot_for("encryption", "decrypt").key_id == "02"  # type: ignore[union-attr]
    assert OPENPGP.slot_for("signature", "sign").key_id == "01"  # type: ignore[union-attr]
    assert OPENPGP.slot_for("vpn", "sign").key_id == "03"  # type: ignore[union-attr]
    assert GENERIC.slot_for("authentication", "sign") is None


def test_several_cards_need_a_choice(make_token: Any) -> None:
    first = make_token("card-one")
    make_token("card-two")
    card = Card(first.module, CardPins())
    with pytest.raises(TokenNotFound, match="several cards are present.*choose one with --slot"):
        card.open()
