"""Certificates, CSRs, CRLs and the CA's own certificates in the SQL store.

Every function takes an open :class:`Connection` and runs inside the
caller's transaction: an issuance and its audit row, or a workflow action
and the certificate it issued, commit together or not at all.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping

from ..errors import NotFound, StorageError
from .schema import ca_certificate, certificate, crl, csr

SERIAL_BITS = 159  # RFC 5280: at most 20 octets, positive; 159 random bits fit


def _new_id(result: Any) -> int:
    """The id the database gave the row just inserted."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


_HEX_DIGITS = frozenset("0123456789abcdef")


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """Accept ``0x1f``, ``1f``, ``1F`` or ``1f:a0:…``; refuse anything else clearly."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise NotFound(f"'{text}' is not a certificate serial number (hexadecimal expected)") from None
    return value


_SERIAL_TAKEN = select(certificate.c.id).where(certificate.c.issuer_key_identifier == bindparam("b_issuer"),
                                               certificate.c.serial == bindparam("b_serial"))
# Where the database can skip a row that breaks one named unique constraint
# (INSERT … ON CONFLICT … DO NOTHING), the issuer+serial constraint itself is
# the uniqueness check: no SELECT before each insert.  Elsewhere (Oracle) the
# SELECT stays.  Any other conflict (a key certified twice) still raises.
_ISSUER_SERIAL = [certificate.c.issuer_key_identifier, certificate.c.serial]
# RETURNING, not the driver's last row id: after a skipped row SQLite's lastrowid is a stale one.
_SKIPS_SERIAL_CONFLICT = {
    name: dialect_insert(certificate).on_conflict_do_nothing(index_elements=_ISSUER_SERIAL).returning(certificate.c.id)
    for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}


def random_serial() -> int:
    """A random positive serial with ≥ 64 bits of entropy (CA/B baseline), at most 159 bits (RFC 5280)."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial >= 1 << 64:
            return serial


def new_serial(conn: Connection, issuer_key_identifier: str) -> int:
    """A random serial; unused for the issuer where :func:`store_certificate` cannot tell a collision itself."""
    for _ in range(8):
        serial = random_serial()
        if conn.dialect.name in _SKIPS_SERIAL_CONFLICT:
            return serial  # store_certificate answers None on a collision; the caller picks another
        taken = conn.execute(_SERIAL_TAKEN, {"b_issuer": issuer_key_identifier, "b_serial": serial_hex(serial)}).first()
        if taken is None:
            return serial
    raise StorageError("could not find an unused serial number (random source broken?)")


def store_csr(
    conn: Connection, *, der: bytes, fingerprint: str, profile: str, requester: str, workflow_id: int | None
) -> int:
    result = conn.execute(
        csr.insert(), dict(
            der=der,
            public_key_sha256=fingerprint,
            profile=profile,
            requester=requester,
            workflow_id=workflow_id,
            received_at=utcnow(),
        )
    )
    return _new_id(result)


def store_certificate(
    conn: Connection,
    cert: x509.Certificate,
    *,
    issuer_key_identifier: str,
    fingerprint: str,
    profile: str,
    owner: str | None,
    token_id: int | None = None,
    csr_id: int | None = None,
    workflow_id: int | None = None,
    key_origin: str | None = None,
) -> int | None:
    """The new row's id; None if the issuer already has a certificate with this serial (nothing stored)."""
    values = dict(
        serial=serial_hex(cert.serial_number),
        issuer=cert.issuer.rfc4514_string(),
        issuer_key_identifier=issuer_key_identifier,
        subject=cert.subject.rfc4514_string(),
        status="valid",
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        owner=owner,
        token_id=token_id,
        profile=profile,
        public_key_sha256=fingerprint,
        csr_id=csr_id,
        key_origin=key_origin,
        workflow_id=workflow_id,
        der=cert.public_bytes(serialization.Encoding.DER),
        created_at=utcnow(),
    )
    skipping = _SKIPS_SERIAL_CONFLICT.get(conn.dialect.name)
    if skipping is None:
        return _new_id(conn.execute(certificate.insert(), values))  # new_serial checked the serial
    inserted = conn.execute(skipping, values).scalar()
    return None if inserted is None else int(inserted)


def find_certificate(conn: Connection, serial: int, issuer_key_identifier: str | None = None) -> RowMapping:
    query = select(certificate).where(certificate.c.serial == serial_hex(serial))
    if issuer_key_identifier is not None:
        query = query.where(certificate.c.issuer_key_identifier == issuer_key_identifier)
    rows = conn.execute(query).mappings().all()
    if not rows:
        raise NotFound(f"no certificate with serial {serial_hex(serial)} in the store")
    if len(rows) > 1:
        raise StorageError(f"serial {serial_hex(serial)} exists for several issuers; name the issuer")
    return rows[0]


def certificate_for_key(conn: Connection, fingerprint: str) -> RowMapping | None:
    """The certificate of the public key with this SHA-256 fingerprint (a key is certified once)."""
    return conn.execute(select(certificate).where(certificate.c.public_key_sha256 == fingerprint)).mappings().first()


def list_certificates(conn: Connection, *, owner: str | None = None, limit: int = 100) -> Sequence[RowMapping]:
    query = select(certificate).order_by(certificate.c.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(certificate.c.owner == owner)
    return conn.execute(query).mappings().all()


def owned_certificates(conn: Connection, serials: Iterable[str], owner: str) -> dict[str, RowMapping]:
    """Serial → row for those of ``serials`` that belong to ``owner`` (others are left out)."""
    wanted = sorted(set(serials))
    if not wanted:
        return {}
    rows = conn.execute(select(certificate).where(certificate.c.serial.in_(wanted), certificate.c.owner == owner))
    return {row["serial"]: row for row in rows.mappings()}


def owned_certificate_der(conn: Connection, serial: str, owner: str) -> bytes:
    """The DER of ``owner``'s certificate ``serial``; none and someone else's are "not found" alike."""
    if not _HEX_DIGITS.issuperset(serial) or not 0 < len(serial) <= 64:
        # Serials are stored as lowercase hex (serial_hex); anything else, a
        # NUL byte from a URL say, names none and must not reach the driver.
        raise NotFound(f"{owner} has no certificate {serial!r}")
    der = conn.execute(select(certificate.c.der).where(certificate.c.serial == serial,
                                                       certificate.c.owner == owner)).scalar()
    if der is None:
        raise NotFound(f"{owner} has no certificate {serial}")
    return bytes(der)


def mark_revoked(conn: Connection, cert_id: int, *, reason: str, when: datetime, from_hold: bool = False) -> None:
    """valid → revoked; with ``from_hold`` a certificateHold becomes a final revocation."""
    current = (certificate.c.status == "revoked") & (certificate.c.revocation_reason == "certificateHold") \
        if from_hold else certificate.c.status == "valid"
    updated = conn.execute(
        certificate.update()
        .where(certificate.c.id == cert_id, current)
        .values(status="revoked", revoked_at=when, revocation_reason=reason)
    ).rowcount
    if updated != 1:
        raise StorageError("the certificate changed while it was being revoked; try again")


def mark_released(conn: Connection, cert_id: int) -> None:
    """A certificateHold ends: valid again (RFC 5280 removeFromCRL: it leaves the next full CRL)."""
    updated = conn.execute(
        certificate.update()
        .where(certificate.c.id == cert_id, certificate.c.status == "revoked",
               certificate.c.revocation_reason == "certificateHold")
        .values(status="valid", revoked_at=None, revocation_reason=None)
    ).rowcount
    if updated != 1:
        raise StorageError("the certificate changed while its hold was being released; try again")


def revoked_certificates(conn: Connection, issuer_key_identifier: str) -> Sequence[RowMapping]:
    """Revoked and not yet expired: expired entries may leave the CRL (RFC 5280 §3.3)."""
    return (
        conn.execute(
            select(certificate.c.serial, certificate.c.revoked_at, certificate.c.revocation_reason)
            .where(
                certificate.c.issuer_key_identifier == issuer_key_identifier,
                certificate.c.status == "revoked",
                certificate.c.not_after > utcnow(),
            )
            .order_by(certificate.c.revoked_at)
        )
        .mappings()
        .all()
    )


def next_crl_number(conn: Connection, issuer_key_identifier: str) -> int:
    last = conn.execute(
        select(func.max(crl.c.crl_number)).where(crl.c.issuer_key_identifier == issuer_key_identifier)
    ).scalar()
    return int(last or 0) + 1


def store_crl(conn: Connection, issued: x509.CertificateRevocationList, *, issuer_key_identifier: str,
              crl_number: int, revoked_count: int) -> int:
    assert issued.next_update_utc is not None
    result = conn.execute(
        crl.insert(), dict(
            issuer_key_identifier=issuer_key_identifier,
            crl_number=crl_number,
            this_update=issued.last_update_utc,
            next_update=issued.next_update_utc,
            revoked_count=revoked_count,
            der=issued.public_bytes(serialization.Encoding.DER),
        )
    )
    return _new_id(result)


def active_ca(conn: Connection) -> RowMapping | None:
    """The CA certificate in use; ``pending`` while an external root signs our CSR."""
    return (
        conn.execute(
            select(ca_certificate)
            .where(ca_certificate.c.status.in_(("active", "pending")))
            .order_by(ca_certificate.c.id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )


def store_ca(conn: Connection, values: Mapping[str, Any]) -> int:
    result = conn.execute(ca_certificate.insert(), {**values, "created_at": utcnow()})
    return _new_id(result)


def activate_ca(conn: Connection, ca_id: int, cert: x509.Certificate) -> None:
    conn.execute(
        ca_certificate.update()
        .where(ca_certificate.c.id == ca_id)
        .values(
            status="active",
            der=cert.public_bytes(serialization.Encoding.DER),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
    )
