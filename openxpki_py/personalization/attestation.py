"""Where a card's key came from: the attestation the agent sends with a CSR, checked against policy.

Without attestation the server has only the agent's word that a key was
generated on a card (a script can post a CSR for a software key); such a
certificate records ``key_origin = card-unattested``.  A card that can
attest (YubiKey PIV) proves it: the agent sends the per-key attestation
certificate and the card's slot f9 certificate with the CSR, the chain is
verified against the vendor roots the site configured
(:mod:`openxpki_py.crypto.attestation`), and the certificate records
``card-attested`` with the card's serial, firmware and PIN/touch policy.

A certificate type with ``require_attestation: true`` is refused without a
valid attestation (``csr.attestation_required``); an attestation that is sent
but does not verify is always refused with its code, never downgraded to
``card-unattested``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ..configreader import Reader
from ..crypto.attestation import (
    YUBICO_PIV,
    AttestationRefused,
    AttestationTrust,
    load_certificate,
    verify_key_attestation,
)
from ..errors import ConfigError

CARD_ATTESTED = "card-attested"
CARD_UNATTESTED = "card-unattested"
# The fields of the CSR post's ``attestation`` object (docs/api.md).
FORMAT, KEY_CERTIFICATE, DEVICE_CERTIFICATE = "format", "key_certificate", "device_certificate"


def parse_attestation_config(r: Reader) -> AttestationTrust:
    """``personalization.attestation``: the vendor roots (and intermediates) as PEM files."""
    trust = AttestationTrust(roots=_certificates(r, "roots"), intermediates=_certificates(r, "intermediates"))
    r.finish()
    return trust


def _certificates(r: Reader, key: str) -> tuple[x509.Certificate, ...]:
    found: list[x509.Certificate] = []
    for i, name in enumerate(r.str_list(key, [])):
        path = Path(name) if Path(name).is_absolute() else r.base_dir / name
        try:
            found.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"{r.key_path(key)}[{i}]: cannot read {path}: {exc.strerror}") from None
        except ValueError:
            raise ConfigError(f"{r.key_path(key)}[{i}]: {path} holds no PEM certificate") from None
    return tuple(found)


def key_origin(attestation: Mapping[str, Any] | None, *, public_key: CertificatePublicKeyTypes, required: bool,
               cert_type: str, card_serial: str, trust: AttestationTrust,
               now: datetime) -> tuple[str, dict[str, str] | None]:
    """(key origin, what the attestation says) for a CSR's key, or AttestationRefused with its code.

    A site without attestation roots checks nothing: an attestation sent
    there leaves the key ``card-unattested``, with a note saying why.
    """
    if not attestation:
        if required:
            raise AttestationRefused(
                f"the {cert_type} certificate needs a key the card attests was generated on it, and the agent "
                "sent no attestation: use a card that can attest (e.g. a YubiKey, PIV route) with a current "
                "openxpki-py-token, or ask your PKI administrator (policy: require_attestation)",
                code="csr.attestation_required")
        return CARD_UNATTESTED, None
    if not trust.roots:
        # Nothing to check it against (and nothing requires it): the key stays unattested, on the record.
        return CARD_UNATTESTED, {"checked": "no", "reason": "no attestation roots are configured"}
    if attestation.get(FORMAT, YUBICO_PIV) != YUBICO_PIV:
        raise AttestationRefused(f"attestation format {attestation.get(FORMAT)!r} is not known here "
                                 f"(known: {YUBICO_PIV})", code="attestation.malformed")
    key_cert = load_certificate(_text(attestation, KEY_CERTIFICATE), "key attestation certificate")
    device_cert = load_certificate(_text(attestation, DEVICE_CERTIFICATE), "device attestation certificate")
    attested = verify_key_attestation(key_cert, device_cert, public_key, trust, now)
    # The card's serial is otherwise only the agent's word: the card's maker vouches for this one.
    if attested.serial is not None and attested.serial != card_serial:
        raise AttestationRefused(f"the key was attested by card {attested.serial}, but the agent reported "
                                 f"card {card_serial}", code="attestation.serial_mismatch")
    return CARD_ATTESTED, attested.as_record()


def _text(attestation: Mapping[str, Any], name: str) -> str:
    value = attestation.get(name)
    if not isinstance(value, str) or not value:
        raise AttestationRefused(f"the attestation has no {name}", code="attestation.malformed")
    return value
