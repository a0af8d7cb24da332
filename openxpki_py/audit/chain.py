"""The append-only audit log, each row chained to the previous one by hash.

``entry_hash = sha256(prev_hash ‖ canonical JSON of the row)``; rewriting or
deleting a row breaks the chain.  The hash is unkeyed: anyone with SQL
access can compute it, so the chain alone proves nothing against someone
who re-hashes it.  Signed checkpoints of its head (:mod:`.checkpoint`) are
the anchor outside the database; :mod:`.verify` checks both.  The append
runs inside the caller's transaction, so an audited action and its audit
row commit (or roll back) together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, RowMapping

from ..db.schema import audit_log

GENESIS = "0" * 64

#: The columns covered by ``entry_hash``, in no particular order (the JSON is sorted).
HASHED_COLUMNS = ("logged_at", "actor", "role_name", "event", "outcome", "target", "details")

# Built once: every audited action runs both (issue #15).
_HEAD = select(audit_log.c.entry_hash).order_by(audit_log.c.id.desc()).limit(1)
_INSERT = audit_log.insert()


def lock_chain(conn: Connection) -> None:
    """Serialise appenders and checkpoint writers until ``conn`` commits."""
    # Two transactions must never chain to the same row (prev_hash is also
    # UNIQUE, so a fork could not commit anyway), and a checkpoint must see a
    # head nobody is extending.  SQLite needs nothing: every write
    # transaction there is BEGIN IMMEDIATE.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
    elif conn.dialect.name == "oracle":
        conn.exec_driver_sql("LOCK TABLE audit_log IN EXCLUSIVE MODE")


def _storable(text: str | None) -> str | None:
    """``text`` as every database can hold it: PostgreSQL text refuses NUL.

    Refusals are audited with what was sent (a role name posted with a NUL
    byte, say), so the byte is written visibly instead of failing the insert.
    """
    return text.replace("\x00", "\\x00") if text is not None else None


def entry_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    payload = json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def append_audit(
    conn: Connection,
    *,
    actor: str,
    event: str,
    outcome: str = "ok",
    role: str | None = None,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append one audit row inside ``conn``'s transaction."""
    lock_chain(conn)
    last = conn.execute(_HEAD).scalar()
    prev = last or GENESIS
    row = {
        "logged_at": datetime.now(timezone.utc).replace(microsecond=0),
        "actor": _storable(actor),
        "role_name": _storable(role),
        "event": event,
        "outcome": outcome,
        "target": _storable(target),
        "details": dict(details) if details else None,
    }
    conn.execute(_INSERT, {**row, "prev_hash": prev, "entry_hash": entry_hash(prev, row)})


def hashed_part(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The columns of a stored row that its ``entry_hash`` covers."""
    return {k: row[k] for k in HASHED_COLUMNS}


def recent_audit(conn: Connection, *, limit: int = 200) -> Sequence[RowMapping]:
    """The newest ``limit`` rows, newest first (what an operator reads on the audit page)."""
    return conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)).mappings().all()
