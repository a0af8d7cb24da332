"""The escrowed key's transport from server to agent (openxpki_py_token.key_transport): tampering is refused."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from openxpki_py_token.key_transport import (
    CHALLENGE_PADDING,
    TransportRefused,
    b64,
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
    expected, challenge = new_challenge(key.public_key())
    assert proof_matches(expected, key.decrypt(challenge, CHALLENGE_PADDING))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError):
        other.decrypt(challenge, CHALLENGE_PADDING)
    assert not proof_matches(expected, b"\x00" * 32)


def test_scrub_overwrites_a_bytes_buffer() -> None:
    data = bytes(bytearray(b"private key material"))  # a fresh object, not a shared constant
    scrub(data)
    assert data == bytes(len(data))
