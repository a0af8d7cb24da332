"""Revoke, hold and release certificates; issue a CRL now; read the current CRL.

The web console, its JSON variant and ``openxpki-py ca revoke / release-hold
/ crl / crl-info`` all call these functions; they call the CA
(:class:`~openxpki_py.crypto.ca.CertificateAuthority`), which writes the
certificate's status and the audit row in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine, RowMapping

from ..db import certstore
from ..audit.pending import chain_pending
from ..db.schema import audit_log, crl
from ..errors import NotFound, PolicyViolation
from . import policy

if TYPE_CHECKING:
    from ..crypto.ca import CertificateAuthority, IssuedCRL

HOLD = "certificateHold"
# What an operator may choose (RFC 5280 §5.3.1): cACompromise and
# aACompromise are not about an end-entity certificate.
OPERATOR_REASONS: tuple[str, ...] = ("unspecified", "keyCompromise", "affiliationChanged", "superseded",
                                     "cessationOfOperation", "privilegeWithdrawn", HOLD)
MAX_COMMENT = 1000


def clean_comment(text: str | None) -> str | None:
    """One line, bounded: a comment is shown in pages and kept in the audit trail."""
    if not text or not text.strip():
        return None
    cleaned = " ".join(text.split())
    if len(cleaned) > MAX_COMMENT:
        raise PolicyViolation(f"the comment is longer than {MAX_COMMENT} characters", code="console.comment")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in cleaned):
        raise PolicyViolation("the comment must be text: no control characters", code="console.comment")
    return cleaned


def find(db: Engine, serial_text: str) -> RowMapping:
    """The stored certificate with this serial (hex, any spelling ``parse_serial`` accepts)."""
    serial = certstore.parse_serial(serial_text)
    if serial <= 0 or serial.bit_length() > 160:
        raise NotFound(f"'{serial_text}' is not a certificate serial number")
    with db.connect() as conn:
        return certstore.find_certificate(conn, serial)


def revoke(db: Engine, ca: CertificateAuthority, serial_text: str, reason: str, *, actor: str, role: str,
           comment: str | None = None) -> RowMapping:
    """Revoke (or hold, with ``certificateHold``); returns the certificate as it is now."""
    action = "cert.hold" if reason == HOLD else "cert.revoke"
    policy.require(db, action, actor=actor, role=role, target=serial_text[:64])
    if reason not in OPERATOR_REASONS:
        raise PolicyViolation(f"unknown revocation reason '{reason}'; use one of {', '.join(OPERATOR_REASONS)}",
                              code="revoke.reason")
    note = clean_comment(comment)
    serial = certstore.parse_serial(serial_text)
    with db.begin() as conn:
        ca.revoke_certificate(conn, serial, reason, actor=actor, role=role, comment=note)
    return find(db, serial_text)


def release_hold(db: Engine, ca: CertificateAuthority, serial_text: str, *, actor: str, role: str,
                 comment: str | None = None) -> RowMapping:
    """End a certificateHold (removeFromCRL): valid again, absent from the next CRL."""
    policy.require(db, "cert.hold.release", actor=actor, role=role, target=serial_text[:64])
    note = clean_comment(comment)
    with db.begin() as conn:
        ca.release_hold(conn, certstore.parse_serial(serial_text), actor=actor, role=role, comment=note)
    return find(db, serial_text)


def issue_crl_now(db: Engine, ca: CertificateAuthority, *, actor: str, role: str) -> tuple[IssuedCRL, list[Path]]:
    """Sign a CRL with every current revocation and publish it (``ca.crl.publish_dir``)."""
    policy.require(db, "crl.issue", actor=actor, role=role)
    with db.begin() as conn:
        issued = ca.issue_crl(conn, actor=actor, role=role)
        written = ca.publish_crl(conn, issued)
    return issued, written


@dataclass(frozen=True)
class CrlStatus:
    """The newest CRL of the active CA key, and what happened since."""

    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    changed_since: int  # revocations, holds and releases since: the next CRL will differ
    overdue: bool

    def as_json(self) -> dict[str, Any]:
        return {"number": self.number, "this_update": self.this_update.isoformat(),
                "next_update": self.next_update.isoformat(), "entries": self.entries,
                "changed_since": self.changed_since, "overdue": self.overdue}


def crl_status(db: Engine, ca: CertificateAuthority) -> CrlStatus | None:
    """None while no CRL was issued for the active CA key."""
    chain_pending(db, only_if_any=True)  # the count goes by chain position: queued rows have none yet
    with db.connect() as conn:
        key_id = ca.key_identifier(conn)
        row = conn.execute(select(crl.c.crl_number, crl.c.this_update, crl.c.next_update, crl.c.revoked_count)
                           .where(crl.c.issuer_key_identifier == key_id)
                           .order_by(crl.c.crl_number.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        changed = _changes_since(conn, int(row["crl_number"]))
    return CrlStatus(int(row["crl_number"]), row["this_update"], row["next_update"], int(row["revoked_count"]),
                     changed, row["next_update"] <= certstore.utcnow())


CHANGES = ("cert.revoke", "cert.hold", "cert.hold.release")


def _changes_since(conn: Connection, number: int) -> int:
    """Revocations, holds and releases audited after the CRL's own audit row (exact, unlike timestamps in seconds)."""
    issued_at = conn.execute(select(func.max(audit_log.c.id)).where(
        audit_log.c.event == "crl.issue", audit_log.c.target == str(number))).scalar()
    if issued_at is None:
        return 0
    return int(conn.execute(select(func.count()).select_from(audit_log).where(
        audit_log.c.event.in_(CHANGES), audit_log.c.outcome == "ok", audit_log.c.id > issued_at)).scalar_one())


def current_crl_der(db: Engine, ca: CertificateAuthority) -> bytes:
    with db.connect() as conn:
        key_id = ca.key_identifier(conn)
        der = conn.execute(select(crl.c.der).where(crl.c.issuer_key_identifier == key_id)
                           .order_by(crl.c.crl_number.desc()).limit(1)).scalar()
    if der is None:
        raise NotFound("no CRL has been issued yet")
    return bytes(der)


def certificate_json(row: RowMapping) -> dict[str, Any]:
    """What the console tells about a certificate (never its key: the store has none)."""
    return {
        "serial": row["serial"], "subject": row["subject"], "issuer": row["issuer"], "status": row["status"],
        "revocation_reason": row["revocation_reason"],
        "revoked_at": row["revoked_at"].isoformat() if row["revoked_at"] else None,
        "not_before": row["not_before"].isoformat(), "not_after": row["not_after"].isoformat(),
        "owner": row["owner"], "profile": row["profile"], "token_id": row["token_id"],
        "workflow_id": row["workflow_id"], "key_origin": row["key_origin"],
    }
