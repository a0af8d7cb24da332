"""CSR checks: small named validators, each with a stable code.

A CSR contributes exactly one thing to a certificate: its public key.  The
validators establish that the requester holds the private key (the CSR's
signature), that the key meets the profile, and that it was never certified
before.  Subject and SAN in the CSR are reported as ignored, never used.

Each validator checks one thing and raises :class:`PolicyViolation` with its
own code (``csr.signature`` …), which is shown to the user and API client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from ..db.schema import certificate
from ..errors import PolicyViolation
from .profiles import Profile

CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
PEM_HEADER = b"-----BEGIN CERTIFICATE REQUEST-----"


@dataclass(frozen=True)
class ExpectedKey:
    """The key the server asked the token to generate (``rsa``/2048, ``ec``/P-256)."""

    algorithm: str
    size: int | None = None
    curve: str | None = None

    def describe(self) -> str:
        return f"RSA-{self.size}" if self.algorithm == "rsa" else f"EC {self.curve}"


@dataclass
class CSRUnderReview:
    """What the validators look at, and what they learn on the way."""

    data: bytes
    profile: Profile
    expected_key: ExpectedKey | None = None
    conn: Connection | None = None
    csr: x509.CertificateSigningRequest | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def request(self) -> x509.CertificateSigningRequest:
        assert self.csr is not None, "csr.parse must run first"
        return self.csr


@dataclass(frozen=True)
class CheckedCSR:
    """A CSR that passed every validator."""

    csr: x509.CertificateSigningRequest
    der: bytes
    public_key_sha256: str
    key: ExpectedKey
    notes: tuple[str, ...]


def public_key_fingerprint(key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of the SubjectPublicKeyInfo: one key, one fingerprint, any encoding."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def describe_key(key: CertificatePublicKeyTypes) -> ExpectedKey:
    if isinstance(key, rsa.RSAPublicKey):
        return ExpectedKey("rsa", size=key.key_size)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ExpectedKey("ec", curve=CURVE_NAMES.get(key.curve.name, key.curve.name))
    return ExpectedKey(type(key).__name__)


# --- the validators, in the order they run -----------------------------------


@dataclass(frozen=True)
class Validator:
    code: str
    description: str
    check: Callable[[CSRUnderReview], None]


def _parse(r: CSRUnderReview) -> None:
    try:
        if r.data.lstrip().startswith(PEM_HEADER):
            r.csr = x509.load_pem_x509_csr(r.data.strip())
        else:
            r.csr = x509.load_der_x509_csr(r.data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise PolicyViolation(f"the CSR cannot be parsed (PKCS#10, PEM or DER expected): {exc}", code="csr.parse") from None


def _signature(r: CSRUnderReview) -> None:
    try:
        valid = r.request.is_signature_valid
    except Exception as exc:  # noqa: BLE001 - unsupported algorithms surface here
        raise PolicyViolation(f"the CSR signature cannot be checked: {exc}", code="csr.signature") from None
    if not valid:
        raise PolicyViolation(
            "the CSR signature does not match its public key (no proof of possession of the private key)",
            code="csr.signature",
        )


def _key_type(r: CSRUnderReview) -> None:
    key = r.request.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < r.profile.rsa_min_size:
            raise PolicyViolation(
                f"RSA key of {key.key_size} bits is too weak; profile {r.profile.name} needs at least {r.profile.rsa_min_size}",
                code="csr.key_size",
            )
        if key.public_numbers().e != 65537:
            raise PolicyViolation("RSA public exponent must be 65537", code="csr.key_exponent")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        curve = CURVE_NAMES.get(key.curve.name, key.curve.name)
        if curve not in r.profile.ec_curves:
            raise PolicyViolation(
                f"EC curve {curve} is not allowed by profile {r.profile.name} (allowed: {', '.join(r.profile.ec_curves)})",
                code="csr.key_curve",
            )
    else:
        raise PolicyViolation(
            f"key type {type(key).__name__.removeprefix('_')} is not allowed; use RSA or EC on a named curve",
            code="csr.key_type",
        )


def _expected_key(r: CSRUnderReview) -> None:
    if r.expected_key is None:
        return
    got = describe_key(r.request.public_key())
    if got != r.expected_key:
        raise PolicyViolation(
            f"the CSR carries a {got.describe()} key but {r.expected_key.describe()} was requested",
            code="csr.key_mismatch",
        )


_CERTIFIED_KEY = select(certificate.c.serial).where(certificate.c.public_key_sha256 == bindparam("b_fingerprint"))


def _key_unused(r: CSRUnderReview) -> None:
    if r.conn is None:
        return
    fingerprint = public_key_fingerprint(r.request.public_key())
    known = r.conn.execute(_CERTIFIED_KEY, {"b_fingerprint": fingerprint}).first()
    if known is not None:
        raise PolicyViolation(
            f"this public key was already certified (certificate serial {known.serial}); generate a new key",
            code="csr.key_reused",
        )


def _subject_ignored(r: CSRUnderReview) -> None:
    # Not an error: tokens and libraries put all sorts of names in CSRs.  The
    # note makes it visible that none of it reaches the certificate.
    if len(r.request.subject) or r.request.extensions:
        r.notes.append("subject and extensions in the CSR are ignored; they come from the directory and the profile")


VALIDATORS: Sequence[Validator] = (
    Validator("csr.parse", "the request is a well-formed PKCS#10 CSR", _parse),
    Validator("csr.signature", "the CSR is signed by the private key of its public key", _signature),
    Validator("csr.key_type", "key algorithm, size and curve meet the profile", _key_type),
    Validator("csr.key_mismatch", "the key is of the type the server asked for", _expected_key),
    Validator("csr.key_reused", "the public key was never certified before", _key_unused),
    Validator("csr.subject_ignored", "subject/SAN in the CSR are not used", _subject_ignored),
)


def check_csr(
    data: bytes,
    profile: Profile,
    *,
    conn: Connection | None = None,
    expected_key: ExpectedKey | None = None,
) -> CheckedCSR:
    """Run every validator; the first refusal raises with its code."""
    review = CSRUnderReview(data=data, profile=profile, expected_key=expected_key, conn=conn)
    for validator in VALIDATORS:
        validator.check(review)
    csr = review.request
    return CheckedCSR(
        csr=csr,
        der=csr.public_bytes(serialization.Encoding.DER),
        public_key_sha256=public_key_fingerprint(csr.public_key()),
        key=describe_key(csr.public_key()),
        notes=tuple(review.notes),
    )
