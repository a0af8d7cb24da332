"""Best-effort wiping in the agent's key import: the template's private parts, the raw ECDH secret."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from openxpki_py_token.key_import import (
    SECRET_ATTRIBUTES,
    _ec_templates,
    _prove,
    _rsa_templates,
    scrub_secret_attributes,
)
from openxpki_py_token.key_transport import b64, new_challenge, proof_matches, transport_context

CONTEXT = transport_context(17, "encryption", "3f0a")


def test_the_private_parts_of_an_import_template_are_overwritten() -> None:
    templates = [*_rsa_templates(rsa.generate_private_key(65537, 2048), b"\x02", "enc"),
                 *_ec_templates(ec.generate_private_key(ec.SECP256R1()), b"\x03", "enc")]
    secrets = [t[a] for t in templates for a in SECRET_ATTRIBUTES if a in t]
    assert len(secrets) == 7 and all(any(s) for s in secrets)  # d, p, q, dmp1, dmq1, iqmp; the EC scalar
    scrub_secret_attributes(templates)
    assert all(not any(s) for s in secrets)
    assert not any(a in t for t in templates for a in SECRET_ATTRIBUTES)


class EcdhCard:
    """Answers ECDH like a card would, and keeps the secret it handed out to look at afterwards."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key, self.handed_out = key, b""

    def ecdh(self, key_id: bytes, peer: ec.EllipticCurvePublicKey) -> bytes:
        self.handed_out = self.key.exchange(ec.ECDH(), peer)
        return self.handed_out


def test_the_raw_ecdh_secret_is_overwritten_once_the_proof_is_made() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    expected, challenge, kind = new_challenge(key.public_key(), CONTEXT)
    card: Any = EcdhCard(key)
    proof = _prove(card, b"\x03", key.public_key(), {"challenge": b64(challenge), "proof": kind}, CONTEXT)
    assert proof_matches(expected, proof)
    assert len(card.handed_out) == 32 and not any(card.handed_out)
