"""Signed checkpoints of the audit chain's head: the anchor outside the database.

A checkpoint says "the chain then ended at row ``row_id`` with hash
``entry_hash`` and held ``row_count`` rows", is signed by the audit key (in
the HSM, never the CA key) and names the digest of the checkpoint before it,
so checkpoints form their own chain.  It is stored in ``audit_checkpoint``
and appended to a file (or syslog) outside the database (:mod:`.external`).

What was checkpointed can no longer be changed, deleted or re-hashed
without :mod:`.verify` noticing; rows appended after the newest checkpoint
are not covered yet (see docs/audit.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ..db.schema import audit_checkpoint, audit_log
from ..errors import AuditChainBroken
from .chain import GENESIS, entry_hash, hashed_part, lock_chain
from .pending import chain_locked, settle_queue

#: Names the format of the signed bytes; a future layout gets a new number.
PAYLOAD_TYPE = "openxpki-py audit checkpoint v1"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    created_at: datetime
    node: str
    row_id: int
    entry_hash: str
    row_count: int
    prev_checkpoint: str
    key_id: str
    signature: bytes

    def payload(self) -> bytes:
        """The exact bytes the audit key signs: every field but the signature."""
        fields = {k: v for k, v in asdict(self).items() if k != "signature"}
        fields["created_at"] = self.created_at.astimezone(timezone.utc).isoformat()
        fields["type"] = PAYLOAD_TYPE
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def digest(self) -> str:
        """What the next checkpoint's ``prev_checkpoint`` names."""
        return hashlib.sha256(self.payload() + self.signature).hexdigest()

    def to_line(self) -> str:
        """One line of the external file: the payload's fields plus the signature."""
        fields = json.loads(self.payload())
        fields["signature"] = base64.b64encode(self.signature).decode()
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_line(cls, text: str) -> Checkpoint:
        """Parse a line written by :meth:`to_line` (a syslog prefix before the JSON is skipped)."""
        start = text.find("{")
        if start < 0:
            raise ValueError("no JSON object on the line")
        data = json.loads(text[start:])
        if not isinstance(data, dict) or data.get("type") != PAYLOAD_TYPE:
            raise ValueError(f"not a checkpoint record (type is not {PAYLOAD_TYPE!r})")
        try:
            return cls(
                seq=int(data["seq"]), created_at=datetime.fromisoformat(data["created_at"]),
                node=str(data["node"]), row_id=int(data["row_id"]), entry_hash=str(data["entry_hash"]),
                row_count=int(data["row_count"]), prev_checkpoint=str(data["prev_checkpoint"]),
                key_id=str(data["key_id"]), signature=base64.b64decode(data["signature"], validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"malformed checkpoint record: {exc}") from None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Checkpoint:
        return cls(seq=int(row["seq"]), created_at=row["created_at"], node=row["node"],
                   row_id=int(row["row_id"]), entry_hash=row["entry_hash"], row_count=int(row["row_count"]),
                   prev_checkpoint=row["prev_checkpoint"], key_id=row["key_id"],
                   signature=bytes(row["signature"]))

    def as_json(self) -> dict[str, Any]:
        return json.loads(self.to_line())  # type: ignore[no-any-return]


# --- the audit key ---------------------------------------------------------------


def key_id_of(public_key: PublicKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo: names the key without trusting the database."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def sign_payload(private_key: PrivateKey, data: bytes) -> bytes:
    # PKCS#1 v1.5 and plain ECDSA: what every HSM offers and openssl verifies.
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return private_key.sign(data, ec.ECDSA(hashes.SHA256()))


def signature_valid(public_key: PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --- reading and writing ---------------------------------------------------------


def load_checkpoints(conn: Connection) -> list[Checkpoint]:
    rows = conn.execute(select(audit_checkpoint).order_by(audit_checkpoint.c.seq)).mappings()
    return [Checkpoint.from_row(r) for r in rows]


def chain_head(conn: Connection) -> tuple[int, str, int]:
    """(last row id, its entry_hash, number of rows); (0, GENESIS, 0) for an empty chain."""
    last = conn.execute(
        select(audit_log.c.id, audit_log.c.entry_hash).order_by(audit_log.c.id.desc()).limit(1)).first()
    count = int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())
    if last is None:
        return 0, GENESIS, 0
    return int(last.id), str(last.entry_hash), count


def write_checkpoint(conn: Connection, private_key: PrivateKey, *, node: str,
                     now: datetime | None = None, only_if_moved: bool = False) -> Checkpoint | None:
    """Sign the chain's head and insert the checkpoint, inside ``conn``'s transaction.

    Refuses (AuditChainBroken) to sign over a chain that no longer matches
    the previous checkpoint: a signature must never bless tampering.  With
    ``only_if_moved`` nothing is written when the head has not changed.
    """
    lock_chain(conn)  # no row may be appended between reading the head and signing it
    settle_queue(conn)  # audited transactions still running end first: their rows come before this head
    chain_locked(conn)  # rows committed but still queued are signed too, not left behind the head
    last_row = conn.execute(
        select(audit_checkpoint).order_by(audit_checkpoint.c.seq.desc()).limit(1)).mappings().first()
    last = Checkpoint.from_row(last_row) if last_row is not None else None
    row_id, head_hash, count = chain_head(conn)
    if only_if_moved and last is not None and (last.row_id, last.entry_hash) == (row_id, head_hash):
        return None
    if last is not None:
        _check_since(conn, last)
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
    public_key = private_key.public_key()
    unsigned = Checkpoint(
        seq=(last.seq + 1) if last else 1, created_at=created, node=node, row_id=row_id,
        entry_hash=head_hash, row_count=count, prev_checkpoint=last.digest() if last else GENESIS,
        key_id=key_id_of(public_key), signature=b"",
    )
    signed = Checkpoint(**{**asdict(unsigned), "signature": sign_payload(private_key, unsigned.payload())})
    conn.execute(audit_checkpoint.insert(), asdict(signed))
    return signed


def _check_since(conn: Connection, last: Checkpoint) -> None:
    """The previous checkpoint's row is still there, and the rows after it chain from it."""
    if last.row_id:
        stored = conn.execute(select(audit_log.c.entry_hash).where(audit_log.c.id == last.row_id)).scalar()
        if stored != last.entry_hash:
            what = "is gone" if stored is None else "has another hash"
            raise AuditChainBroken(f"row {last.row_id} named by checkpoint {last.seq} {what}; refusing to "
                                   "sign a new checkpoint: run 'openxpki-py audit verify'")
        upto = conn.execute(select(func.count()).select_from(audit_log)
                            .where(audit_log.c.id <= last.row_id)).scalar_one()
        if upto != last.row_count:
            raise AuditChainBroken(f"checkpoint {last.seq} counted {last.row_count} rows up to row "
                                   f"{last.row_id}, the table now holds {upto}; refusing to sign a new "
                                   "checkpoint: run 'openxpki-py audit verify'")
    prev = last.entry_hash
    for r in conn.execute(select(audit_log).where(audit_log.c.id > last.row_id)
                          .order_by(audit_log.c.id)).mappings():
        if r["prev_hash"] != prev or r["entry_hash"] != entry_hash(prev, hashed_part(r)):
            raise AuditChainBroken(f"row {r['id']} breaks the chain after checkpoint {last.seq}; refusing "
                                   "to sign a new checkpoint: run 'openxpki-py audit verify'")
        prev = r["entry_hash"]


def latest_checkpoint_time(conn: Connection) -> datetime | None:
    value: datetime | None = conn.execute(select(func.max(audit_checkpoint.c.created_at))).scalar()
    return value
