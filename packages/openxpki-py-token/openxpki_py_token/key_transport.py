"""Carrying an escrowed private key from the server to the agent, and proving it reached the card.

The agent makes an ephemeral X25519 key for one delivery and sends its
public half.  The server answers with its own ephemeral X25519 public key,
a nonce and the private key (PKCS#8 DER) sealed with AES-256-GCM under
``HKDF-SHA256(X25519 secret, salt = agent key ‖ server key, info = label ‖
context)``.  The context names the workflow, the certificate type and the
certificate serial and is also the AEAD's associated data: a sealed key
replayed into another workflow or task does not open.  TLS protects the
channel already; this keeps the key out of anything that logs or caches a
response body in between (a proxy, a debugging dump).

The receipt proves the card now holds the key.  RSA: the server encrypts a
random challenge to the certificate's public key (RSA-OAEP), only the card
can decrypt it, and the agent returns the plaintext.  EC: the server sends
an ephemeral public key on the certificate's curve, the card derives the
ECDH secret with it (PKCS#11 ``CKM_ECDH1_DERIVE``, PIV GENERAL AUTHENTICATE)
and the agent returns ``HKDF-SHA256(secret, salt = ephemeral key, info =
label ‖ context)``, bound to the same workflow, type and serial as the
delivery.  Either way the server keeps only the SHA-256 of the right answer.

Shared by the server and the agent, so both derive the same key the same way.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ProtocolError

_LABEL = b"openxpki-py escrow transport v1\x00"
_PROOF_LABEL = b"openxpki-py escrow ecdh proof v1\x00"
NONCE_BYTES = 12
CHALLENGE_BYTES = 32
#: What the challenge is encrypted with; SoftHSM and most cards offer OAEP with SHA-1 only.
CHALLENGE_PADDING = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


class TransportRefused(ProtocolError):
    """A sealed key that does not open: tampered with, for another workflow or task, or garbled."""

    code = "escrow.transport"


@dataclass(frozen=True)
class SealedKey:
    """What the server sends: its ephemeral public key, the nonce, the ciphertext (all base64url)."""

    server_key: str
    nonce: str
    ciphertext: str

    def as_api(self) -> dict[str, str]:
        return {"server_key": self.server_key, "nonce": self.nonce, "ciphertext": self.ciphertext}


def transport_context(workflow_id: int, cert_type: str, serial: str) -> bytes:
    """The delivery this key is for; HKDF info and AEAD associated data."""
    return f"workflow={int(workflow_id)};cert_type={cert_type};serial={serial.lower()}".encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: object, what: str, *, size: int | None = None) -> bytes:
    if not isinstance(text, str) or not text or len(text) > 16384:
        raise TransportRefused(f"{what} is missing or not base64url text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TransportRefused(f"{what} is not base64url") from None
    if size is not None and len(data) != size:
        raise TransportRefused(f"{what} must be {size} bytes")
    return data


def new_transport_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_text(key: X25519PrivateKey) -> str:
    return b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _session_key(own: X25519PrivateKey, peer: X25519PublicKey, agent_raw: bytes, server_raw: bytes,
                 context: bytes) -> bytes:
    try:
        shared = own.exchange(peer)
    except ValueError:  # OpenSSL refuses the all-zero secret of a low-order point (RFC 7748 §6.1)
        shared = b""
    if not any(shared):
        raise TransportRefused("the other side's transport key is not usable")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=agent_raw + server_raw,
                info=_LABEL + context).derive(shared)


def seal_private_key(agent_key_text: str, pkcs8_der: bytes | bytearray, context: bytes) -> SealedKey:
    """Server side: encrypt ``pkcs8_der`` for the agent that sent ``agent_key_text``."""
    agent_raw = unb64(agent_key_text, "agent_key", size=32)
    server = X25519PrivateKey.generate()
    server_raw = server.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = _session_key(server, X25519PublicKey.from_public_bytes(agent_raw), agent_raw, server_raw, context)
    nonce = os.urandom(NONCE_BYTES)
    plain = bytes(pkcs8_der)
    try:
        ciphertext = AESGCM(key).encrypt(nonce, plain, context)
    finally:
        if plain is not pkcs8_der:
            scrub(plain)
    return SealedKey(server_key=b64(server_raw), nonce=b64(nonce), ciphertext=b64(ciphertext))


def open_private_key(agent_key: X25519PrivateKey, sealed: dict[str, object], context: bytes) -> bytearray:
    """Agent side: the PKCS#8 DER as a bytearray the caller wipes; TransportRefused if it does not open."""
    server_raw = unb64(sealed.get("server_key"), "server_key", size=32)
    nonce = unb64(sealed.get("nonce"), "nonce", size=NONCE_BYTES)
    ciphertext = unb64(sealed.get("ciphertext"), "ciphertext")
    agent_raw = agent_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = _session_key(agent_key, X25519PublicKey.from_public_bytes(server_raw), agent_raw, server_raw, context)
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, context)
    except InvalidTag:
        raise TransportRefused("the escrowed key does not open: it was changed on the way or is for "
                               "another workflow or task; nothing was written to the card") from None
    buffer = bytearray(plain)
    scrub(plain)
    return buffer


# --- the proof that the card holds the key ------------------------------------------


#: The receipt's proof, as the delivery names it (``proof``): RSA-OAEP decryption or ECDH on the card.
PROOF_RSA_OAEP, PROOF_ECDH = "rsa-oaep", "ecdh-hkdf-sha256"
#: For cards that decrypt PKCS#1 v1.5 only (an OpenPGP card strips the padding in PSO:DECIPHER).
#: No oracle is gained: the ciphertext comes from the server, which holds the escrowed key anyway.
PROOF_RSA_PKCS1V15 = "rsa-pkcs1v15"
RSA_PROOFS = (PROOF_RSA_OAEP, PROOF_RSA_PKCS1V15)
EscrowedPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def new_challenge(public_key: EscrowedPublicKey, context: bytes,
                  rsa_proof: str = PROOF_RSA_OAEP) -> tuple[bytes, bytes, str]:
    """(the right answer's SHA-256 for the server to keep, the challenge for the card, its kind).

    RSA: 32 random bytes encrypted to the key (OAEP, or PKCS#1 v1.5 if ``rsa_proof`` asks).  EC: an ephemeral public key
    (X9.62 uncompressed point) on the key's curve; the ephemeral private key
    is dropped as soon as the expected answer is known.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        challenge = os.urandom(CHALLENGE_BYTES)
        if rsa_proof == PROOF_RSA_PKCS1V15:
            return hashlib.sha256(challenge).digest(), public_key.encrypt(challenge, padding.PKCS1v15()), rsa_proof
        return hashlib.sha256(challenge).digest(), public_key.encrypt(challenge, CHALLENGE_PADDING), PROOF_RSA_OAEP
    ephemeral = ec.generate_private_key(public_key.curve)
    point = ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    shared = ephemeral.exchange(ec.ECDH(), public_key)
    del ephemeral
    return hashlib.sha256(ecdh_proof(shared, point, context)).digest(), point, PROOF_ECDH


def ecdh_proof(shared_secret: bytes, challenge_point: bytes, context: bytes) -> bytes:
    """What the agent returns for an EC key: the card's ECDH secret, bound to the challenge and the delivery."""
    if not any(shared_secret):
        raise TransportRefused("the card's ECDH secret is empty")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=challenge_point,
                info=_PROOF_LABEL + context).derive(shared_secret)


def challenge_peer(public_key: ec.EllipticCurvePublicKey, challenge_point: bytes) -> ec.EllipticCurvePublicKey:
    """The server's ephemeral key from an EC challenge; refused unless it is a point on the key's curve."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(public_key.curve, challenge_point)
    except ValueError:
        raise TransportRefused(f"the challenge is not a point on {public_key.curve.name}") from None


def proof_matches(expected_sha256: bytes, proof: bytes) -> bool:
    return hmac.compare_digest(hashlib.sha256(proof).digest(), expected_sha256)


# --- wiping ---------------------------------------------------------------------------


def wipe(buffer: bytearray) -> None:
    """Overwrite a buffer we own."""
    buffer[:] = bytes(len(buffer))


def scrub(data: bytes) -> None:
    """Best effort: overwrite an immutable ``bytes`` object's buffer in place (CPython only).

    Python gives no guarantee for immutable objects (copies may exist); this
    shortens how long a plaintext key lingers in freed memory.  Objects of
    length 0 and 1 are shared singletons and are never touched.
    """
    if len(data) < 2 or sys.implementation.name != "cpython":
        return
    offset = sys.getsizeof(b"") - 1  # header size of a bytes object: where its data starts
    ctypes.memset(id(data) + offset, 0, len(data))
