"""The PKCS#11 objects the agent has the user's card make or store: a key pair, a certificate.

A generated key's private half is never extractable and does only what its
usage needs; a certificate object carries its key's CKA_ID, so that
middleware pairs the two.  Nothing here talks to a card:
:class:`~openxpki_py_token.card.Card` hands these templates to it.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, CertificateType, MechanismFlag, ObjectClass

from .card_profiles import Usage
from .keyspec import KeySpec
from .pkcs11.public_keys import EC_PARAMS


def keypair_templates(spec: KeySpec, usage: Usage) -> tuple[dict[Attribute, Any], dict[Attribute, Any],
                                                             MechanismFlag]:
    """Private and public templates (and capabilities): the private half never leaves the card.

    Every key must sign once, for the CSR that proves possession; a decryption
    key additionally decrypts/unwraps (RSA) or derives (EC, ECDH).
    """
    decrypt = usage == "decrypt"
    is_rsa = spec.algorithm == "rsa"
    private = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: decrypt and is_rsa,
        Attribute.UNWRAP: decrypt and is_rsa,
        Attribute.DERIVE: decrypt and not is_rsa,
    }
    public: dict[Attribute, Any] = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
    }
    if not is_rsa:
        assert spec.curve is not None
        public[Attribute.EC_PARAMS] = EC_PARAMS[spec.curve]
    capabilities = MechanismFlag.SIGN | MechanismFlag.VERIFY
    if decrypt and is_rsa:
        public.update({Attribute.ENCRYPT: True, Attribute.WRAP: True})
        capabilities |= MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.WRAP | MechanismFlag.UNWRAP
    elif decrypt:
        capabilities |= MechanismFlag.DERIVE
    return private, public, capabilities


def certificate_template(cert: x509.Certificate, key_id: bytes, label: str) -> dict[Attribute, Any]:
    """A public X.509 certificate object on the card, next to the key with the same CKA_ID."""
    return {
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.ID: key_id,
        Attribute.LABEL: label,
        Attribute.SUBJECT: cert.subject.public_bytes(),
        Attribute.ISSUER: cert.issuer.public_bytes(),
        Attribute.SERIAL_NUMBER: der_integer(cert.serial_number),
        Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
    }


def der_integer(value: int) -> bytes:
    """DER INTEGER (CKA_SERIAL_NUMBER holds the encoded serial, tag and length included)."""
    body = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    if len(body) > 127:
        raise ValueError("serial numbers longer than 127 bytes are not X.509")
    return bytes((0x02, len(body))) + body
