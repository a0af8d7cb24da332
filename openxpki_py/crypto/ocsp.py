"""The OCSP responder (RFC 6960, the lightweight profile of RFC 5019).

Answers come from the certificate store, never from parsing a CRL: a
certificate revoked a second ago is "revoked" in the next answer.  They are
signed by a *delegated* responder certificate (EKU OCSPSigning,
id-pkix-ocsp-nocheck) whose key lives in the HSM next to the CA key, never by
the CA key itself; the CA issues that certificate with a short life and
issues a new one when a third of it is left (:meth:`OcspResponder.signer`).

A request for a certificate of another issuer gets ``unauthorized``; an
unparsable one ``malformedRequest``; a responder without its key
``tryLater`` (the operator runs ``openxpki-py ca ocsp-init``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from openxpki_py_token.keyspec import KeySpec
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..db import certstore
from ..db.engine import storage_error
from ..errors import CAError, NotFound, OpenXPKIError, PolicyViolation, TokenKeyNotFound
from .ca import REVOCATION_REASONS, CertificateAuthority, IssuanceRequest
from .csr import public_key_fingerprint
from .keys.base import CAPrivateKey, KeyBackend
from .keys.config import KeyConfig, Pkcs11KeyConfig, SoftwareKeyConfig, open_key_backend

if TYPE_CHECKING:
    from ..config import OcspConfig

log = logging.getLogger(__name__)

PROFILE = "ocsp_signing"
OWNER = "ocsp-responder"  # the responder certificates' owner in the store


def responder_key_config(ca_key: KeyConfig, generation: int) -> KeyConfig:
    """Responder key number ``generation`` next to the CA key: same token (or folder), its own label (or file).

    Each renewal certifies a new key: a public key is never certified twice
    (``csr.key_reused``, and the store's unique fingerprint), the responder's
    included.
    """
    origin = "ca.ocsp key (derived from ca.key)"
    if isinstance(ca_key, Pkcs11KeyConfig):
        return replace(ca_key, key_label=f"{ca_key.key_label}-ocsp-{generation}", key_id=None, origin=origin)
    if isinstance(ca_key, SoftwareKeyConfig):
        path = ca_key.path.with_name(f"{ca_key.path.stem}-ocsp-{generation}{ca_key.path.suffix}")
        return replace(ca_key, path=path, origin=origin)
    raise TypeError(f"unknown key config {type(ca_key).__name__}")


MAX_GENERATIONS = 10_000  # thirty-day certificates: centuries of renewals
#: After a renewal failed, answers go on with the current certificate; the next try waits this long.
RENEWAL_RETRY = timedelta(minutes=1)
#: How often the responder looks whether its own certificate was revoked (then it makes a new key).
OWN_STATUS_CHECK = timedelta(minutes=1)


@dataclass
class _Signer:
    generation: int
    key: CAPrivateKey
    certificate: x509.Certificate


class OcspResponder:
    """Signs OCSP answers for one CA with its delegated responder key."""

    def __init__(self, ca: CertificateAuthority, config: OcspConfig, db: Engine,
                 backend_for: Callable[[int], KeyBackend] | None = None) -> None:
        self.ca = ca
        self.config = config
        self.db = db
        self._backend_for = backend_for or (lambda n: open_key_backend(responder_key_config(ca.config.key, n)))
        self._backends: dict[int, KeyBackend] = {}
        self._signer: _Signer | None = None
        self._retry_renewal_at: datetime | None = None
        self._refused_generation = 0  # a key the CA refused to certify (policy): the next try makes a new one
        self._revoked_generation = 0  # keys up to this one have a revoked certificate: they never sign again
        self._own_status_at: datetime | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    def _backend(self, generation: int) -> KeyBackend:
        if generation not in self._backends:
            self._backends[generation] = self._backend_for(generation)
        return self._backends[generation]

    def describe(self) -> str:
        """Where the current responder key is (never a secret)."""
        return self._backend(max(self._current_generation(), 1)).describe()

    def _current_generation(self) -> int:
        """The newest responder key in the token (0: none yet); another process may have made a newer one."""
        generation = self._signer.generation if self._signer is not None else 0
        while generation < MAX_GENERATIONS and self._backend(generation + 1).key_exists():
            generation += 1
        return generation

    # --- the responder's key and certificate ---------------------------------------

    def create_key(self, *, actor: str) -> x509.Certificate:
        """Generate the first responder key in the token (never overwriting one) and certify it."""
        with self._lock:
            if self._current_generation() > 0:
                raise CAError(f"an OCSP responder key already exists at {self._backend(1).describe()}")
            self._signer = self._new_signer(1, actor)
            return self._signer.certificate

    def signer(self, *, actor: str = "ocsp", now: datetime | None = None,
               ca_not_after: datetime | None = None) -> _Signer:
        """The responder key and a current certificate for it.

        When a third of the certificate's life is left, the next key is
        generated in the token and certified (not when the certificate
        already ends with the CA's, ``ca_not_after``: a new one could not
        end later).  Read-only otherwise: a write transaction only to issue
        a certificate.  A renewal that fails (the CA refuses, the database
        or the HSM is down) is logged and tried again a minute later; until
        then, and as long as it is valid, the current certificate signs.
        """
        now = now or certstore.utcnow()
        with self._lock:
            signer = self._signer
            if signer is None:
                generation = self._current_generation()
                if generation == 0:
                    raise TokenKeyNotFound("the OCSP responder has no key yet: run 'openxpki-py ca ocsp-init'")
                key = self._backend(generation).load_private_key()
                signer = self._signer = _Signer(generation, key, self._stored_certificate(key)
                                                or self._certify(key, actor))
            if self._own_certificate_revoked(signer, now) or signer.generation <= self._revoked_generation:
                signer = self._signer = self._replace_revoked(signer, actor, now)
            if self._renewal_due(signer.certificate, now, ca_not_after):
                try:
                    signer = self._signer = self._renewed(signer, actor)
                    self._retry_renewal_at = None
                except OpenXPKIError as exc:
                    self._retry_renewal_at = now + RENEWAL_RETRY
                    if now >= signer.certificate.not_valid_after_utc:
                        raise
                    log.warning("OCSP responder certificate not renewed (%s); answering with the current one "
                                "(valid until %s), next try in %s", exc,
                                signer.certificate.not_valid_after_utc.isoformat(), RENEWAL_RETRY)
            if now >= signer.certificate.not_valid_after_utc:
                raise CAError(f"the OCSP responder certificate expired at "
                              f"{signer.certificate.not_valid_after_utc.isoformat()} and was not renewed; "
                              "see the earlier warnings in the log")
            return signer

    def _own_certificate_revoked(self, signer: _Signer, now: datetime) -> bool:
        """Whether an operator revoked (or held) the responder's certificate; looked at once a minute.

        Its clients never check it (id-pkix-ocsp-nocheck): revoking it must
        make the responder stop using it, or revoking a compromised
        responder key would change nothing.
        """
        checked = self._own_status_at
        if checked is not None and checked <= now < checked + OWN_STATUS_CHECK:
            return False
        self._own_status_at = now
        with self.db.connect() as conn:
            row = certstore.certificate_for_key(conn, public_key_fingerprint(signer.key.public_key()))
        if row is None or row["status"] != "revoked":
            return False
        log.warning("OCSP responder certificate %s was revoked (%s): making a new key", row["serial"],
                    row["revocation_reason"])
        self._revoked_generation = max(self._revoked_generation, signer.generation)
        return True

    def _replace_revoked(self, signer: _Signer, actor: str, now: datetime) -> _Signer:
        """A new key and certificate for a revoked one; no answer is signed with the revoked one meanwhile."""
        if self._retry_renewal_at is not None and now < self._retry_renewal_at:
            raise CAError("the OCSP responder's certificate was revoked and a new one could not be issued a "
                          f"moment ago; answers are tryLater until one is (next try {self._retry_renewal_at})")
        try:
            return self._renewed(signer, actor)
        except OpenXPKIError as exc:
            self._retry_renewal_at = now + RENEWAL_RETRY
            raise CAError(f"the OCSP responder's certificate was revoked and no new one could be issued "
                          f"({exc}); answers are tryLater until one is") from exc

    def _renewal_due(self, cert: x509.Certificate, now: datetime, ca_not_after: datetime | None) -> bool:
        if self._retry_renewal_at is not None and now < self._retry_renewal_at:
            return False
        if ca_not_after is not None and cert.not_valid_after_utc >= ca_not_after:
            return False  # it ends with the CA already: a renewal would not end later, only shorten each time
        return cert.not_valid_after_utc - now < (cert.not_valid_after_utc - cert.not_valid_before_utc) / 3

    def _renewed(self, signer: _Signer, actor: str) -> _Signer:
        """The next signer: a newer key already in the token if there is one, else a new key.

        Every failure is a project error: the store's too (locked, a read-only standby, gone).
        """
        try:
            return self._renew(signer, actor)
        except SQLAlchemyError as exc:
            raise storage_error(exc) from exc

    def _renew(self, signer: _Signer, actor: str) -> _Signer:
        newest = self._current_generation()
        try:
            if newest > signer.generation and newest != self._refused_generation:
                # Made by another process (its certificate is in the store), or by an
                # earlier try here that could not certify it: used, not made again.
                key = self._backend(newest).load_private_key()
                return _Signer(newest, key, self._stored_certificate(key) or self._certify(key, actor))
            newest += 1
            return self._new_signer(newest, actor)
        except PolicyViolation:
            self._refused_generation = newest  # the CA refuses this key itself: the next try makes another
            raise

    def _stored_certificate(self, key: CAPrivateKey) -> x509.Certificate | None:
        with self.db.connect() as conn:
            row = certstore.certificate_for_key(conn, public_key_fingerprint(key.public_key()))
        return x509.load_der_x509_certificate(bytes(row["der"])) if row is not None else None

    def _new_signer(self, generation: int, actor: str) -> _Signer:
        key = self._backend(generation).generate_private_key(KeySpec.parse(self.ca.config.key.algorithm))
        return _Signer(generation, key, self._certify(key, actor))

    def _certify(self, key: CAPrivateKey, actor: str) -> x509.Certificate:
        # The CA issues the responder certificate through its usual path (profile,
        # serial, store, audit); the CSR is signed inside the token.
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "OCSP responder")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        with self.db.begin() as conn:
            issued = self.ca.issue_certificate(conn, IssuanceRequest(
                csr=csr.public_bytes(serialization.Encoding.PEM), profile=PROFILE,
                subject_attributes={}, owner=OWNER, requester=actor))
        log.info("OCSP responder certificate %s issued, valid until %s", issued.serial,
                 issued.certificate.not_valid_after_utc.isoformat())
        return issued.certificate

    # --- answers -------------------------------------------------------------------

    def respond(self, request_der: bytes, *, now: datetime | None = None) -> bytes:
        """The DER OCSP response to a DER request (always a response, never an exception)."""
        try:
            request = ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _status_only(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        now = now or certstore.utcnow()
        try:
            with self.db.connect() as conn:
                ca_cert = self.ca.certificate(conn)
            signer = self.signer(now=now, ca_not_after=ca_cert.not_valid_after_utc)
        except OpenXPKIError as exc:
            log.warning("OCSP: cannot sign: %s", exc)
            return _status_only(ocsp.OCSPResponseStatus.TRY_LATER)
        if not _same_issuer(request, ca_cert):
            return _status_only(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        with self.db.connect() as conn:
            builder = self._status(conn, request, now)
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.certificate)
        builder = builder.certificates([signer.certificate])
        try:
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce)
            builder = builder.add_extension(nonce.value, critical=False)
        except x509.ExtensionNotFound:
            pass
        response = builder.sign(signer.key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)

    def _status(self, conn: Connection, request: ocsp.OCSPRequest, now: datetime) -> ocsp.OCSPResponseBuilder:
        """good / revoked (time, reason) / unknown, from the store: never older than the last revocation."""
        status, revoked_at, reason = ocsp.OCSPCertStatus.GOOD, None, None
        try:
            row = certstore.find_certificate(conn, request.serial_number, self.ca.key_identifier(conn))
        except NotFound:
            status = ocsp.OCSPCertStatus.UNKNOWN
        else:
            if row["status"] == "revoked":
                status, revoked_at = ocsp.OCSPCertStatus.REVOKED, row["revoked_at"]
                reason = REVOCATION_REASONS.get(row["revocation_reason"] or "unspecified")
        return ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash, issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number, algorithm=request.hash_algorithm, cert_status=status,
            this_update=now, next_update=now + timedelta(minutes=self.config.validity_minutes),
            revocation_time=revoked_at, revocation_reason=reason)


def _same_issuer(request: ocsp.OCSPRequest, ca_cert: x509.Certificate) -> bool:
    """Whether the request names this CA (issuer name hash and key hash, in the request's algorithm)."""
    algorithm = request.hash_algorithm
    name_hash = hashes.Hash(algorithm)
    name_hash.update(ca_cert.subject.public_bytes())
    key_hash = hashes.Hash(algorithm)
    key_hash.update(_public_key_bits(ca_cert))
    return name_hash.finalize() == request.issuer_name_hash and key_hash.finalize() == request.issuer_key_hash


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's content (what RFC 6960's issuerKeyHash hashes)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
    body, _ = _read_tlv(spki, 0)
    _, after_algorithm = _read_tlv(body, 0)
    bits, _ = _read_tlv(body, after_algorithm)
    return bits[1:]  # drop the unused-bits octet


def _read_tlv(data: bytes, offset: int) -> tuple[bytes, int]:
    """(content, offset after) of the DER element at ``offset``."""
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    return data[start:start + length], start + length


def _status_only(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
