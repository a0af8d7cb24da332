"""The certification authority: its lifecycle and its three operations.

``CertificateAuthority`` never knows where its key lives: the key backend
hands it a cryptography private key whose ``sign`` may run in an HSM.  All
operations take the caller's open connection so that what they store (the
certificate, the revocation, the CRL, the audit row) commits together with
whatever the caller does in the same transaction (e.g. a workflow action).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy.engine import Connection

from ..audit import append_audit
from ..db import certstore
from ..personalization.tokens import lock_usable_card
from ..errors import CAError, PolicyViolation, StorageError
from . import extensions
from .csr import CheckedCSR, ExpectedKey, check_csr
from .keys.base import CAPrivateKey, KeyBackend
from .profiles import ProfileSet

if TYPE_CHECKING:
    from ..config import CAConfig, Config

CLOCK_SKEW = timedelta(minutes=5)

HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# RFC 5280 §5.3.1 reason names; "unspecified" is expressed by omitting the
# reasonCode extension, as the RFC recommends.
REVOCATION_REASONS: Mapping[str, x509.ReasonFlags | None] = {
    "unspecified": None,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
# The one reversible reason: a held certificate is released (removeFromCRL) or revoked for good.
HOLD = "certificateHold"


@dataclass(frozen=True)
class IssuanceRequest:
    """Everything an issuance needs; subject data comes from the directory."""

    csr: bytes
    profile: str
    subject_attributes: Mapping[str, str]
    owner: str | None
    requester: str
    role: str = "system"
    token_id: int | None = None
    workflow_id: int | None = None
    expected_key: ExpectedKey | None = None
    key_origin: str | None = None  # e.g. "card-unattested": recorded with the certificate and audited
    validity_days: int | None = None  # shorter than the profile's (a temporary card's); never longer


@dataclass(frozen=True)
class IssuedCertificate:
    id: int
    certificate: x509.Certificate
    profile: str
    notes: tuple[str, ...] = ()

    @property
    def serial(self) -> str:
        return certstore.serial_hex(self.certificate.serial_number)

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class IssuedCRL:
    crl: x509.CertificateRevocationList
    number: int
    revoked: int

    @property
    def der(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.DER)


@dataclass
class _Active:
    id: int
    certificate: x509.Certificate | None
    key_identifier: str
    signer: CAPrivateKey | None = field(default=None, repr=False)


class CertificateAuthority:
    """One CA: a key in a backend, its certificate in the store, its profiles."""

    def __init__(self, ca_config: CAConfig, profiles: ProfileSet, key_backend: KeyBackend) -> None:
        self.config = ca_config
        self.profiles = profiles
        self.key_backend = key_backend
        self._active: _Active | None = None

    @classmethod
    def from_config(cls, config: Config) -> CertificateAuthority:
        from .keys import open_key_backend

        profiles = ProfileSet.load(config.ca.profiles_dir, config.ca.profile_variables)
        return cls(config.ca, profiles, open_key_backend(config.ca.key))

    # --- signing ---------------------------------------------------------------

    def _hash(self) -> hashes.HashAlgorithm:
        return HASHES[self.config.hash]()

    def _rsa_padding(self, key: CAPrivateKey) -> padding.AsymmetricPadding | None:
        if not isinstance(key, rsa.RSAPrivateKey):
            return None
        if self.config.rsa_padding == "pss":
            return padding.PSS(mgf=padding.MGF1(self._hash()), salt_length=padding.PSS.DIGEST_LENGTH)
        return padding.PKCS1v15()

    def _sign(self, builder: Any, key: CAPrivateKey) -> Any:  # three builder types, three results
        pad = self._rsa_padding(key)
        if pad is None:
            return builder.sign(key, self._hash())
        return builder.sign(key, self._hash(), rsa_padding=pad)

    # --- lifecycle -------------------------------------------------------------

    def initialize(self, conn: Connection, *, actor: str, external_root: bool = False,
                   now: datetime | None = None) -> x509.Certificate | x509.CertificateSigningRequest:
        """Create the CA key inside the token and a self-signed root (or a CSR).

        Refuses to run twice: an existing CA or key is never overwritten.
        """
        from openxpki_py_token.keyspec import KeySpec

        if certstore.active_ca(conn) is not None:
            raise CAError("the CA is already initialised in this database; nothing was changed")
        if self.key_backend.key_exists():
            raise CAError(
                f"a key already exists at {self.key_backend.describe()}; remove it or configure another "
                "key label — an existing CA key is never overwritten"
            )
        key = self.key_backend.generate_private_key(KeySpec.parse(self.config.key.algorithm))
        subject = _parse_dn(self.config.subject)
        public_key = key.public_key()
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        now = now or certstore.utcnow()
        if external_root:
            csr_builder = x509.CertificateSigningRequestBuilder().subject_name(subject).add_extension(
                x509.BasicConstraints(ca=True, path_length=0), critical=True
            )
            request: x509.CertificateSigningRequest = self._sign(csr_builder, key)
            certstore.store_ca(conn, {
                "subject": subject.rfc4514_string(), "key_identifier": ski.digest.hex(),
                "not_before": now, "not_after": now, "status": "pending",
                "csr_der": request.public_bytes(serialization.Encoding.DER),
            })
            append_audit(conn, actor=actor, event="ca.init", target=subject.rfc4514_string(),
                         details={"mode": "csr", "key": self.key_backend.describe()})
            return request
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=self.config.validity_days))
        )
        builder = extensions.ca_extensions(builder, public_key, self_signed=True)
        cert: x509.Certificate = self._sign(builder, key)
        ca_id = certstore.store_ca(conn, {
            "subject": subject.rfc4514_string(), "key_identifier": ski.digest.hex(),
            "not_before": cert.not_valid_before_utc, "not_after": cert.not_valid_after_utc,
            "status": "active", "der": cert.public_bytes(serialization.Encoding.DER),
        })
        append_audit(conn, actor=actor, event="ca.init", target=subject.rfc4514_string(),
                     details={"mode": "self-signed", "key": self.key_backend.describe()})
        self._active = _Active(ca_id, cert, ski.digest.hex(), key)
        return cert

    def import_certificate(self, conn: Connection, data: bytes, *, actor: str) -> x509.Certificate:
        """Activate the CA certificate an external root issued for our CSR."""
        row = certstore.active_ca(conn)
        if row is None or row["status"] != "pending":
            raise CAError("no CA is waiting for a certificate; run 'ca init --external-root' first")
        try:
            cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data))
        except ValueError as exc:
            raise CAError(f"the file is not an X.509 certificate: {exc}") from None
        key = self.key_backend.load_private_key()
        if _spki(cert.public_key()) != _spki(key.public_key()):
            raise CAError("the certificate does not belong to the CA key in the token (public keys differ)")
        _check_ca_certificate(cert)
        certstore.activate_ca(conn, int(row["id"]), cert)
        append_audit(conn, actor=actor, event="ca.import", target=cert.subject.rfc4514_string())
        self._active = None
        return cert

    def _load(self, conn: Connection) -> _Active:
        if self._active is not None and self._active.certificate is not None:
            return self._active
        row = certstore.active_ca(conn)
        if row is None:
            raise CAError("the CA is not initialised; run 'openxpki-py ca init'")
        if row["status"] != "active":
            raise CAError("the CA waits for its certificate from the external root; run 'openxpki-py ca import-cert'")
        cert = x509.load_der_x509_certificate(row["der"])
        self._active = _Active(int(row["id"]), cert, row["key_identifier"])
        return self._active

    def key_identifier(self, conn: Connection) -> str:
        """The active CA key's identifier (hex SKI): which certificates in the store are this CA's."""
        return self._load(conn).key_identifier

    def certificate(self, conn: Connection) -> x509.Certificate:
        active = self._load(conn)
        assert active.certificate is not None
        return active.certificate

    def _signer(self, conn: Connection) -> tuple[_Active, CAPrivateKey]:
        active = self._load(conn)
        if active.signer is None:
            key = self.key_backend.load_private_key()
            assert active.certificate is not None
            if _spki(key.public_key()) != _spki(active.certificate.public_key()):
                raise CAError(
                    f"the key at {self.key_backend.describe()} does not match the CA certificate in the database"
                )
            active.signer = key
        return active, active.signer

    def check_key(self, conn: Connection) -> None:
        """Sign a test message with the CA key and verify it with the CA certificate.

        Proves what issuance will need: the token is present, the PIN works,
        the key is the certificate's and signs.  Raises the token's or the CA's
        error with its message otherwise (``ca show``, monitoring).
        """
        active, key = self._signer(conn)
        assert active.certificate is not None
        message = b"openxpki-py CA key check"
        public = active.certificate.public_key()
        try:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                assert isinstance(public, ec.EllipticCurvePublicKey)
                public.verify(key.sign(message, ec.ECDSA(self._hash())), message, ec.ECDSA(self._hash()))
            else:
                assert isinstance(public, rsa.RSAPublicKey)
                pad = padding.PKCS1v15()
                public.verify(key.sign(message, pad, self._hash()), message, pad, self._hash())
        except InvalidSignature as exc:
            raise CAError(f"the key at {self.key_backend.describe()} made a signature the CA certificate "
                          "does not verify") from exc

    # --- operations ------------------------------------------------------------

    def check_csr(self, conn: Connection, data: bytes, profile_name: str,
                  expected_key: ExpectedKey | None = None) -> CheckedCSR:
        return check_csr(data, self.profiles.get(profile_name), conn=conn, expected_key=expected_key)

    def issue_certificate(self, conn: Connection, request: IssuanceRequest,
                          *, now: datetime | None = None) -> IssuedCertificate:
        """Check the CSR, build, sign and store the certificate; return it."""
        profile = self.profiles.get(request.profile)
        card_ends = None
        if request.token_id is not None:
            # In the issuing transaction: a card made unusable meanwhile gets nothing (console/cards.py),
            # and a temporary card's certificate ends with the card (personalization/temporary.py).
            card_ends = lock_usable_card(conn, request.token_id)["temporary_until"]
        checked = check_csr(request.csr, profile, conn=conn, expected_key=request.expected_key)
        subject = profile.subject_name(request.subject_attributes)
        alt_names = profile.subject_alt_names(request.subject_attributes)
        sid = profile.sid_extension(request.subject_attributes)
        active, key = self._signer(conn)
        ca_cert = active.certificate
        assert ca_cert is not None
        now = now or certstore.utcnow()
        days = min(profile.validity_days, request.validity_days or profile.validity_days)
        not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
        if not_after <= now:
            raise CAError("the CA certificate has expired; no certificate can be issued")
        if card_ends is not None and card_ends <= now + CLOCK_SKEW:
            raise PolicyViolation(f"the temporary card's days ended {card_ends:%Y-%m-%d %H:%M} UTC; it gets no "
                                  "certificate: ask the help desk", code="token.temporary_ended")
        if card_ends is not None:
            not_after = min(not_after, card_ends)
        # A few minutes back: a client (a domain controller) whose clock lags
        # must not see a certificate that is "not yet valid".
        not_before = max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)
        public_key = checked.csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        issuer_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = extensions.end_entity_extensions(
            builder, profile=profile, public_key=public_key, alt_names=alt_names, issuer_ski=issuer_ski,
            crl_url=self.config.crl.url, issuer_url=self.config.issuer_url, sid=sid,
            ocsp_url=self.config.ocsp.url if self.config.ocsp is not None else None,
        )
        csr_id = certstore.store_csr(conn, der=checked.der, fingerprint=checked.public_key_sha256,
                                     profile=profile.name, requester=request.requester,
                                     workflow_id=request.workflow_id)
        cert, cert_id = self._sign_and_store(conn, builder, key, active.key_identifier, checked, request,
                                             profile=profile.name, csr_id=csr_id)
        append_audit(conn, actor=request.requester, role=request.role, event="cert.issue",
                     target=certstore.serial_hex(cert.serial_number),
                     details={"profile": profile.name, "subject": subject.rfc4514_string(),
                              "owner": request.owner, "workflow_id": request.workflow_id,
                              "key_origin": request.key_origin})
        return IssuedCertificate(cert_id, cert, profile.name, checked.notes)

    def _sign_and_store(self, conn: Connection, builder: x509.CertificateBuilder, key: CAPrivateKey,
                        issuer_key_identifier: str, checked: CheckedCSR, request: IssuanceRequest, *,
                        profile: str, csr_id: int) -> tuple[x509.Certificate, int]:
        """Sign with a random serial and store; the issuer's (issuer, serial) constraint refuses a repeat.

        A repeat (one in 2^95 even after 2^64 certificates) is signed again
        with another serial; the certificate with the refused serial was never
        stored nor handed out.
        """
        for _ in range(8):
            cert: x509.Certificate = self._sign(
                builder.serial_number(certstore.new_serial(conn, issuer_key_identifier)), key)
            cert_id = certstore.store_certificate(
                conn, cert, issuer_key_identifier=issuer_key_identifier, fingerprint=checked.public_key_sha256,
                profile=profile, owner=request.owner, token_id=request.token_id, csr_id=csr_id,
                workflow_id=request.workflow_id, key_origin=request.key_origin,
            )
            if cert_id is not None:
                return cert, cert_id
        raise StorageError("could not find an unused serial number (random source broken?)")

    def revoke_certificate(self, conn: Connection, serial: int, reason: str, *, actor: str,
                           role: str = "system", when: datetime | None = None, comment: str | None = None) -> None:
        """Revoke, or put on hold (``certificateHold``); a held certificate may still be revoked for good."""
        if reason not in REVOCATION_REASONS:
            raise PolicyViolation(
                f"unknown revocation reason '{reason}'; use one of {', '.join(REVOCATION_REASONS)}",
                code="revoke.reason",
            )
        active = self._load(conn)
        row = certstore.find_certificate(conn, serial, active.key_identifier)
        held = row["status"] == "revoked" and row["revocation_reason"] == HOLD
        if row["status"] == "revoked" and (not held or reason == HOLD):
            raise PolicyViolation(f"certificate {row['serial']} is already revoked"
                                  + (" (on hold)" if held else ""), code="revoke.already")
        certstore.mark_revoked(conn, int(row["id"]), reason=reason, when=when or certstore.utcnow(),
                               from_hold=held)
        details: dict[str, Any] = {"reason": reason}
        if held:
            details["was_on_hold"] = True
        if comment:
            details["comment"] = comment
        append_audit(conn, actor=actor, role=role, event="cert.hold" if reason == HOLD else "cert.revoke",
                     target=row["serial"], details=details)

    def release_hold(self, conn: Connection, serial: int, *, actor: str, role: str = "system",
                     comment: str | None = None) -> None:
        """End a ``certificateHold``: the certificate is valid again and leaves the next CRL (removeFromCRL)."""
        active = self._load(conn)
        row = certstore.find_certificate(conn, serial, active.key_identifier)
        if row["status"] != "revoked" or row["revocation_reason"] != HOLD:
            raise PolicyViolation(f"certificate {row['serial']} is not on hold; only a certificateHold can be "
                                  "released", code="revoke.not_on_hold")
        certstore.mark_released(conn, int(row["id"]))
        details: dict[str, Any] = {"reason": "removeFromCRL", "held_since": row["revoked_at"].isoformat()}
        if comment:
            details["comment"] = comment
        append_audit(conn, actor=actor, role=role, event="cert.hold.release", target=row["serial"], details=details)

    def issue_crl(self, conn: Connection, *, actor: str, role: str = "system",
                  now: datetime | None = None) -> IssuedCRL:
        active, key = self._signer(conn)
        ca_cert = active.certificate
        assert ca_cert is not None
        now = now or certstore.utcnow()
        number = certstore.next_crl_number(conn, active.key_identifier)
        issuer_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            # never promises more than the CA certificate's own life
            .next_update(min(now + timedelta(hours=self.config.crl.validity_hours), ca_cert.not_valid_after_utc))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                           critical=False)
        )
        revoked = certstore.revoked_certificates(conn, active.key_identifier)
        for entry in revoked:
            revoked_builder = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(entry["revoked_at"])
            )
            flag = REVOCATION_REASONS.get(entry["revocation_reason"] or "unspecified")
            if flag is not None:
                revoked_builder = revoked_builder.add_extension(x509.CRLReason(flag), critical=False)
            builder = builder.add_revoked_certificate(revoked_builder.build())
        issued = self._sign(builder, key)
        certstore.store_crl(conn, issued, issuer_key_identifier=active.key_identifier, crl_number=number,
                            revoked_count=len(revoked))
        append_audit(conn, actor=actor, role=role, event="crl.issue", target=str(number),
                     details={"revoked": len(revoked)})
        return IssuedCRL(issued, number, len(revoked))

    def publish_crl(self, conn: Connection, issued: IssuedCRL) -> list[Path]:
        """Write the CRL (DER) and the CA certificate where Apache serves them.

        Written atomically (temp file + rename) so a client never downloads a
        half-written CRL.  File names follow the URLs in the profiles.
        """
        target = self.config.crl.publish_dir
        if target is None:
            return []
        target.mkdir(parents=True, exist_ok=True)
        crl_name = self.config.crl.url.rsplit("/", 1)[-1] or "ca.crl"
        crt_name = self.config.issuer_url.rsplit("/", 1)[-1] or "ca.crt"
        ca_der = self.certificate(conn).public_bytes(serialization.Encoding.DER)
        written = [_atomic_write(target / crl_name, issued.der), _atomic_write(target / crt_name, ca_der)]
        return written


def _check_ca_certificate(cert: x509.Certificate) -> None:
    """What an imported CA certificate must have for this CA to issue with it."""
    def extension(cls: type[x509.ExtensionType]) -> Any:
        try:
            return cert.extensions.get_extension_for_class(cls).value
        except x509.ExtensionNotFound:
            return None

    bc = extension(x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise CAError("the certificate is not a CA certificate (basicConstraints CA:TRUE missing)")
    ku = extension(x509.KeyUsage)
    if ku is None or not (ku.key_cert_sign and ku.crl_sign):
        raise CAError("the certificate's keyUsage lacks keyCertSign and cRLSign; ask the root to issue it with both")
    if extension(x509.SubjectKeyIdentifier) is None:
        raise CAError("the certificate has no subjectKeyIdentifier (issued certificates name it as their "
                      "authorityKeyIdentifier); ask the root to include it")
    now = certstore.utcnow()
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise CAError(f"the certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                      f"{cert.not_valid_after_utc:%Y-%m-%d})")


def _atomic_write(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _parse_dn(text: str) -> x509.Name:
    try:
        return x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise CAError(f"ca.subject: '{text}' is not a distinguished name (RFC 4514): {exc}") from None
