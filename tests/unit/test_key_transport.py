"""The escrowed key's transport from server to agent (openxpki_py_token.key_transport): tampering is refused."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from openxpki_py_token.key_transport import (
    CHALLENGE_PADDING,
    PROOF_ECDH,
    PROOF_RSA_OAEP,
    PROOF_RSA_PKCS1V15,
    TransportRefused,
    b64,
    challenge_peer,
    ecdh_proof,
    new_challenge,
    new_transport_key,
    open_private_key,
    proof_matches,
    public_text,
    scrub,
    seal_private_key,
    transport_context,
    unb64,
    wipe,
)

KEY = b"\x30\x82" + bytes(range(256)) * 4  # stands in for PKCS#8 DER
CONTEXT = transport_context(17, "encryption", "3F0A")


def _sealed() -> tuple[Any, dict[str, str]]:
    agent = new_transport_key()
    return agent, seal_private_key(public_text(agent), KEY, CONTEXT).as_api()


def test_the_agent_opens_what_the_server_sealed_for_it() -> None:
    agent, sealed = _sealed()
    opened = open_private_key(agent, sealed, CONTEXT)
    assert isinstance(opened, bytearray) and bytes(opened) == KEY
    assert KEY.hex() not in str(sealed) and b64(KEY) not in str(sealed)
    wipe(opened)
    assert opened == bytearray(len(KEY))


def test_context_names_workflow_type_and_serial_in_lower_case() -> None:
    assert CONTEXT == b"workflow=17;cert_type=encryption;serial=3f0a"


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "server_key"])
def test_a_changed_byte_anywhere_is_refused(field: str) -> None:
    agent, sealed = _sealed()
    raw = bytearray(unb64(sealed[field], field))
    raw[len(raw) // 2] ^= 0x01
    with pytest.raises(TransportRefused) as info:
        open_private_key(agent, {**sealed, field: b64(bytes(raw))}, CONTEXT)
    assert info.value.code == "escrow.transport"


@pytest.mark.parametrize("other", [transport_context(18, "encryption", "3f0a"),
                                   transport_context(17, "authentication", "3f0a"),
                                   transport_context(17, "encryption", "3f0b")])
def test_a_key_for_another_workflow_or_task_does_not_open(other: bytes) -> None:
    agent, sealed = _sealed()
    with pytest.raises(TransportRefused, match="another workflow or task"):
        open_private_key(agent, sealed, other)


def test_another_agents_key_does_not_open_it() -> None:
    _, sealed = _sealed()
    with pytest.raises(TransportRefused):
        open_private_key(new_transport_key(), sealed, CONTEXT)


@pytest.mark.parametrize("bad", ["", "!!!!", b64(b"short"), None, 5, "A" * 20000])
def test_garbled_fields_are_refused_with_a_code(bad: Any) -> None:
    agent, sealed = _sealed()
    with pytest.raises(TransportRefused):
        open_private_key(agent, {**sealed, "server_key": bad}, CONTEXT)
    with pytest.raises(TransportRefused):
        seal_private_key(bad, KEY, CONTEXT)


def test_a_low_order_agent_key_is_refused() -> None:
    """The all-zero point makes the X25519 secret zero (RFC 7748 §6.1): no key from it."""
    zero = base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode()
    with pytest.raises(TransportRefused, match="not usable"):
        seal_private_key(zero, KEY, CONTEXT)


def test_only_the_key_holder_answers_the_challenge() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expected, challenge, kind = new_challenge(key.public_key(), CONTEXT)
    assert kind == PROOF_RSA_OAEP
    assert proof_matches(expected, key.decrypt(challenge, CHALLENGE_PADDING))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError):
        other.decrypt(challenge, CHALLENGE_PADDING)
    assert not proof_matches(expected, b"\x00" * 32)


def test_a_card_without_oaep_gets_a_pkcs1v15_challenge_when_it_asks() -> None:
    """OpenPGP cards through OpenSC decrypt PKCS#1 v1.5 only: the agent asks, the answer is the same proof."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expected, challenge, kind = new_challenge(key.public_key(), CONTEXT, PROOF_RSA_PKCS1V15)
    assert kind == PROOF_RSA_PKCS1V15
    assert proof_matches(expected, key.decrypt(challenge, padding.PKCS1v15()))
    with pytest.raises(ValueError):
        key.decrypt(challenge, CHALLENGE_PADDING)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_only_the_ec_key_holder_answers_the_ecdh_challenge_for_this_delivery(curve: ec.EllipticCurve) -> None:
    """The card's ECDH secret with the server's ephemeral key, bound by HKDF to workflow, type and serial."""
    key = ec.generate_private_key(curve)
    expected, challenge, kind = new_challenge(key.public_key(), CONTEXT)
    assert kind == PROOF_ECDH and challenge[0] == 0x04  # an uncompressed point, not a secret
    peer = challenge_peer(key.public_key(), challenge)
    secret = key.exchange(ec.ECDH(), peer)
    assert proof_matches(expected, ecdh_proof(secret, challenge, CONTEXT))
    assert not proof_matches(expected, secret)  # the raw secret is not the answer
    for other_context in (transport_context(18, "encryption", "3f0a"), transport_context(17, "encryption", "3f0b")):
        assert not proof_matches(expected, ecdh_proof(secret, challenge, other_context))
    other = ec.generate_private_key(curve)
    assert not proof_matches(expected, ecdh_proof(other.exchange(ec.ECDH(), peer), challenge, CONTEXT))
    # Each delivery is a new ephemeral key: an old answer never counts for a new challenge.
    again, challenge2, _ = new_challenge(key.public_key(), CONTEXT)
    assert challenge2 != challenge and not proof_matches(again, ecdh_proof(secret, challenge, CONTEXT))


def test_an_ecdh_challenge_off_the_keys_curve_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    _, p384_point, _ = new_challenge(ec.generate_private_key(ec.SECP384R1()).public_key(), CONTEXT)
    for bad in (p384_point, b"\x04" + bytes(64), b"\x00"):
        with pytest.raises(TransportRefused, match="not a point on secp256r1"):
            challenge_peer(key.public_key(), bad)
    with pytest.raises(TransportRefused, match="empty"):
        ecdh_proof(bytes(32), p384_point, CONTEXT)


def test_scrub_overwrites_a_bytes_buffer() -> None:
    data = bytes(bytearray(b"private key material"))  # a fresh object, not a shared constant
    scrub(data)
    assert data == bytes(len(data))
