"""The append-only audit log, each row chained to the previous one by hash.

``entry_hash = sha256(prev_hash ‖ canonical JSON of the row)``; rewriting or
deleting a row breaks the chain, which :func:`verify_chain` reports.  The
append runs inside the caller's transaction, so an audited action and its
audit row commit (or roll back) together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, RowMapping

from .db.schema import audit_log

GENESIS = "0" * 64


def _entry_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
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
    # Serialise appenders so two transactions never chain to the same row
    # (prev_hash is also UNIQUE, so a fork could not commit anyway).  SQLite
    # needs nothing: every write transaction there is BEGIN IMMEDIATE.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
    elif conn.dialect.name == "oracle":
        conn.exec_driver_sql("LOCK TABLE audit_log IN EXCLUSIVE MODE")
    last = conn.execute(select(audit_log.c.entry_hash).order_by(audit_log.c.id.desc()).limit(1)).scalar()
    prev = last or GENESIS
    row = {
        "logged_at": datetime.now(timezone.utc).replace(microsecond=0),
        "actor": actor,
        "role_name": role,
        "event": event,
        "outcome": outcome,
        "target": target,
        "details": dict(details) if details else None,
    }
    conn.execute(audit_log.insert(), {**row, "prev_hash": prev, "entry_hash": _entry_hash(prev, row)})


def verify_chain(conn: Connection) -> int | None:
    """Return the id of the first row that breaks the chain, or None if intact."""
    prev = GENESIS
    for r in conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings():
        row = {k: r[k] for k in ("logged_at", "actor", "role_name", "event", "outcome", "target", "details")}
        if r["prev_hash"] != prev or r["entry_hash"] != _entry_hash(prev, row):
            return int(r["id"])
        prev = r["entry_hash"]
    return None


def recent_audit(conn: Connection, *, limit: int = 200) -> Sequence[RowMapping]:
    """The newest ``limit`` rows, newest first (what an operator reads on the audit page)."""
    return conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)).mappings().all()
