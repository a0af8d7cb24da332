"""A token's key objects as cryptography public keys.

Shared by the CA's HSM backend (which checks that the CA certificate matches
its key) and the token agent (which puts the card's public key in a CSR).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType

from ..errors import TokenError, TokenKeyNotFound
from ..keyspec import Curve, KeySpec

# DER of the namedCurve OIDs (CKAEC_PARAMS) for the curves we support.
EC_PARAMS: dict[Curve, bytes] = {
    "P-256": bytes.fromhex("06082a8648ce3d030107"),
    "P-384": bytes.fromhex("06052b81040022"),
}



def public_key_of(private: Any, public: Any | None,
                  where: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The cryptography public key from the token's public key object.

    RSA can fall back to the modulus and exponent every private key object
    carries; an EC private key does not carry its point.
    """
    key_type = private[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        source = public if public is not None else private
        modulus = int.from_bytes(source[Attribute.MODULUS], "big")
        exponent = int.from_bytes(source[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    if key_type == KeyType.EC:
        if public is None:
            raise TokenKeyNotFound(f"{where}: the token has no public key object for this EC key "
                                   "(same label and id); store it there")
        params = bytes(public[Attribute.EC_PARAMS])
        curve = {der: name for name, der in EC_PARAMS.items()}.get(params)
        if curve is None:
            raise TokenError(f"{where}: the EC key is on an unsupported curve (use P-256 or P-384)")
        ec_curve = KeySpec("ec", curve=curve).ec_curve()
        point = _unwrap_ec_point(bytes(public[Attribute.EC_POINT]), ec_curve)
        return ec.EllipticCurvePublicKey.from_encoded_point(ec_curve, point)
    raise TokenError(f"{where}: is a {getattr(key_type, 'name', key_type)} key; the CA needs RSA or EC")


def _unwrap_ec_point(value: bytes, curve: ec.EllipticCurve) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point (some tokens omit it)."""
    raw_length = 1 + 2 * ((curve.key_size + 7) // 8)
    if len(value) == raw_length and value[0] == 0x04:
        return value
    if len(value) >= 2 and value[0] == 0x04:
        if value[1] < 0x80 and value[1] == len(value) - 2:
            return value[2:]
        if value[1] == 0x81 and len(value) >= 3 and value[2] == len(value) - 3:
            return value[3:]
    raise TokenError("CKA_EC_POINT is neither a DER OCTET STRING nor a raw point")
