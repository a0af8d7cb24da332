"""Key attestation: proof from the card's maker that a key was generated on the card.

A YubiKey (PIV, firmware 4.3+) certifies a key it generated with its own
attestation key (PIV slot ``f9``), whose certificate Yubico issued at the
factory.  The chain, leaf first::

    per-key attestation certificate  (public key = the generated key; YubiKey extensions)
      └─ issued by the slot f9 device certificate
           └─ issued by Yubico's PIV attestation CA (a configured root, or via configured intermediates)

:func:`verify_key_attestation` checks that chain against the roots the site
configured (cryptography does the signatures), the validity of every link at
``now``, that the attested key is the CSR's key, and reads Yubico's
extensions (firmware, serial, PIN/touch policy, form factor).  Every
refusal is an :class:`AttestationRefused` with a stable code:

- ``attestation.malformed``: not X.509 (PEM or DER), or an extension that cannot be read;
- ``attestation.chain``: a signature or issuer that does not lead to a configured root;
- ``attestation.expired``: a certificate of the chain is not valid at ``now``;
- ``attestation.key_mismatch``: the attested key is not the CSR's key.

Nothing here knows workflows or configuration files: the personalization
decides when attestation is required (:mod:`openxpki_py.personalization.attestation`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ..errors import PolicyViolation

YUBICO_PIV = "yubico-piv"  # the one attestation format known so far
# Yubico's PIV attestation extensions (developers.yubico.com/PIV/Introduction/PIV_attestation.html).
OID_FIRMWARE = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")  # 3 bytes: major, minor, patch
OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")  # DER INTEGER
OID_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")  # 2 bytes: PIN policy, touch policy
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")  # 1 byte
PIN_POLICIES = {1: "never", 2: "once", 3: "always", 4: "match-once", 5: "match-always"}
TOUCH_POLICIES = {1: "never", 2: "always", 3: "cached"}
FORM_FACTORS = {0: "unknown", 1: "usb-a-keychain", 2: "usb-a-nano", 3: "usb-c-keychain", 4: "usb-c-nano",
                5: "usb-c-lightning", 6: "usb-a-bio", 7: "usb-c-bio"}
# Root ← intermediate ← … ← device certificate: newer vendor chains have CAs in between.
MAX_INTERMEDIATES = 4


class AttestationRefused(PolicyViolation):
    """A key attestation that does not prove what it claims, or none where the policy requires one."""

    code = "attestation"


@dataclass(frozen=True)
class AttestationTrust:
    """The vendor roots a site accepts (e.g. Yubico's PIV attestation CAs), and CAs between them and cards."""

    roots: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class AttestedKey:
    """What a verified attestation says about the key and the card it was made on."""

    format: str
    key_certificate_sha256: str
    device: str  # the device certificate's subject (which attestation key vouched)
    root: str  # the configured root the chain ends in
    serial: str | None = None
    firmware: str | None = None
    pin_policy: str | None = None
    touch_policy: str | None = None
    form_factor: str | None = None

    def as_record(self) -> dict[str, str]:
        """For the workflow context and the audit log: text only, absent facts left out."""
        return {name: value for name, value in vars(self).items() if value is not None}


def load_certificate(text: str, what: str) -> x509.Certificate:
    """A certificate sent as PEM or as base64 DER; ``attestation.malformed`` otherwise."""
    try:
        if "-----BEGIN" in text:
            return x509.load_pem_x509_certificate(text.encode("ascii"))
        return x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
    except (ValueError, UnicodeEncodeError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise AttestationRefused(f"the {what} is not an X.509 certificate (PEM or base64 DER): {exc}",
                                 code="attestation.malformed") from None


def verify_key_attestation(key_cert: x509.Certificate, device_cert: x509.Certificate,
                           public_key: CertificatePublicKeyTypes, trust: AttestationTrust,
                           now: datetime) -> AttestedKey:
    """Check a Yubico PIV attestation of ``public_key``; the facts it attests, or AttestationRefused."""
    root, chain = _chain_to_root(device_cert, trust)
    for cert, what in ((key_cert, "key attestation certificate"), (device_cert, "device attestation certificate"),
                       *((c, f"attestation CA {c.subject.rfc4514_string()}") for c in (*chain, root))):
        _check_validity(cert, what, now)
    _check_issued(key_cert, device_cert, "the key attestation certificate is not signed by the card's "
                                         "attestation key (slot f9 certificate)")
    if _spki(key_cert.public_key()) != _spki(public_key):
        raise AttestationRefused("the attested key is not the key of the certificate request: the card "
                                 "did not make this key", code="attestation.key_mismatch")
    return _facts(key_cert, device_cert, root)


def _chain_to_root(device_cert: x509.Certificate,
                   trust: AttestationTrust) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The configured root the device certificate leads to, and the intermediates on the way."""
    if not trust.roots:
        raise AttestationRefused("no attestation roots are configured (personalization.attestation.roots)",
                                 code="attestation.chain")
    current, chain = device_cert, list[x509.Certificate]()
    for _ in range(MAX_INTERMEDIATES + 1):
        root = _issuer_among(current, trust.roots)
        if root is not None:
            return root, chain
        issuer = _issuer_among(current, trust.intermediates)
        if issuer is None or issuer in chain or issuer == current:
            break
        _check_ca(issuer)
        chain.append(issuer)
        current = issuer
    raise AttestationRefused(
        f"the card's attestation certificate ({device_cert.subject.rfc4514_string()}, issued by "
        f"{device_cert.issuer.rfc4514_string()}) does not lead to a configured attestation root; "
        "a card from another vendor, or the root is missing from personalization.attestation.roots",
        code="attestation.chain")


def _issuer_among(cert: x509.Certificate, candidates: Iterable[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue  # same name, other key (a forgery, or a re-keyed CA): try the next one
        return candidate
    return None


def _check_issued(cert: x509.Certificate, issuer: x509.Certificate, message: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise AttestationRefused(message, code="attestation.chain") from None


def _check_ca(cert: x509.Certificate) -> None:
    """A configured intermediate that says it is no CA must not vouch for others."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return  # older vendor CAs carry no extensions at all
    if not constraints.ca:
        raise AttestationRefused(f"{cert.subject.rfc4514_string()} is not a CA certificate",
                                 code="attestation.chain")


def _check_validity(cert: x509.Certificate, what: str, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationRefused(
            f"the {what} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now", code="attestation.expired")


def _facts(key_cert: x509.Certificate, device_cert: x509.Certificate, root: x509.Certificate) -> AttestedKey:
    extensions = {ext.oid: ext.value for ext in key_cert.extensions}

    def raw(oid: x509.ObjectIdentifier) -> bytes | None:
        value = extensions.get(oid)
        return value.value if isinstance(value, x509.UnrecognizedExtension) else None

    firmware, serial, policy, form = raw(OID_FIRMWARE), raw(OID_SERIAL), raw(OID_POLICY), raw(OID_FORM_FACTOR)
    if firmware is not None and len(firmware) != 3:
        _malformed("firmware version")
    if policy is not None and len(policy) != 2:
        _malformed("PIN/touch policy")
    if form is not None and len(form) != 1:
        _malformed("form factor")
    return AttestedKey(
        format=YUBICO_PIV,
        key_certificate_sha256=hashlib.sha256(key_cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        device=device_cert.subject.rfc4514_string(),
        root=root.subject.rfc4514_string(),
        serial=str(_der_integer(serial)) if serial is not None else None,
        firmware=".".join(str(part) for part in firmware) if firmware is not None else None,
        pin_policy=PIN_POLICIES.get(policy[0], str(policy[0])) if policy is not None else None,
        touch_policy=TOUCH_POLICIES.get(policy[1], str(policy[1])) if policy is not None else None,
        # The high bits flag FIPS / CSPN editions; the low ones name the shape.
        form_factor=FORM_FACTORS.get(form[0] & 0x0F, str(form[0])) if form is not None else None,
    )


def _der_integer(data: bytes) -> int:
    """A non-negative DER INTEGER (the YubiKey serial)."""
    if len(data) < 3 or data[0] != 0x02 or data[1] != len(data) - 2 or data[1] > 8 or data[2] & 0x80:
        _malformed("serial number")
    return int.from_bytes(data[2:], "big")


def _malformed(what: str) -> NoReturn:
    raise AttestationRefused(f"the key attestation certificate's {what} extension cannot be read",
                             code="attestation.malformed")


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
