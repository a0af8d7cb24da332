"""The append-only audit log, each row chained to the previous one by hash.

``entry_hash = sha256(prev_hash ‖ canonical JSON of the row)``; rewriting or
deleting a row breaks the chain.  The hash is unkeyed: anyone with SQL
access can compute it, so the chain alone proves nothing against someone
who re-hashes it.  Signed checkpoints of its head (:mod:`.checkpoint`) are
the anchor outside the database; :mod:`.verify` checks both.  The append
runs inside the caller's transaction, so an audited action and its audit
row commit (or roll back) together.

On PostgreSQL and Oracle the row is only queued there (``audit_pending``,
no lock): holding the chain's lock until the caller's commit serialised
every audited commit of every node (issue #15).  :mod:`.pending` chains the
queued rows right after the commit, in one short transaction per batch.
SQLite appends to the chain at once: it has one writer anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine, RowMapping

from ..db.schema import audit_log, audit_pending

GENESIS = "0" * 64

#: The columns covered by ``entry_hash``, in no particular order (the JSON is sorted).
HASHED_COLUMNS = ("logged_at", "actor", "role_name", "event", "outcome", "target", "details")

# Built once: every audited action runs both (issue #15).
_HEAD = select(audit_log.c.entry_hash).order_by(audit_log.c.id.desc()).limit(1)
_INSERT = audit_log.insert()
_QUEUE = audit_pending.insert()

#: Databases where an audited transaction queues its audit rows instead of chaining them.
DEFERRING_DIALECTS = frozenset({"postgresql", "oracle"})

# The engines this context (a web request, a worker round, a CLI command)
# queued audit rows in: what :func:`.pending.chain_queued` chains at its end.
_queued_in: ContextVar[tuple[Engine, ...]] = ContextVar("audit_queued_in", default=())


def defers_chaining(conn: Connection | Engine) -> bool:
    return conn.dialect.name in DEFERRING_DIALECTS


def lock_chain(conn: Connection, *, wait_seconds: float | None = None) -> None:
    """Serialise appenders and checkpoint writers until ``conn`` commits.

    ``wait_seconds``: on Oracle, give up (ORA-30006, a database error) rather
    than wait longer; PostgreSQL's caller sets ``lock_timeout`` for the
    transaction instead (:func:`openxpki_py.audit.pending.chain_pending`).
    """
    # Two transactions must never chain to the same row (prev_hash is also
    # UNIQUE, so a fork could not commit anyway), and a checkpoint must see a
    # head nobody is extending.  SQLite needs nothing: every write
    # transaction there is BEGIN IMMEDIATE.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
    elif conn.dialect.name == "oracle":
        wait = f" WAIT {max(1, round(wait_seconds))}" if wait_seconds is not None else ""
        conn.exec_driver_sql(f"LOCK TABLE audit_log IN EXCLUSIVE MODE{wait}")


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
    """Append one audit row inside ``conn``'s transaction (queued for the chain on PostgreSQL/Oracle)."""
    row = {
        "logged_at": datetime.now(timezone.utc).replace(microsecond=0),
        "actor": _storable(actor),
        "role_name": _storable(role),
        "event": event,
        "outcome": outcome,
        "target": _storable(target),
        "details": dict(details) if details else None,
    }
    if defers_chaining(conn):
        conn.execute(_QUEUE, row)
        queued = _queued_in.get()
        if conn.engine not in queued:
            _queued_in.set((*queued, conn.engine))
        return
    lock_chain(conn)
    link_rows(conn, [row])


def link_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` (their hashed columns) to the chain in this order; the caller holds :func:`lock_chain`."""
    prev = conn.execute(_HEAD).scalar() or GENESIS
    linked = []
    for row in rows:
        digest = entry_hash(prev, row)
        linked.append({**row, "prev_hash": prev, "entry_hash": digest})
        prev = digest
    conn.execute(_INSERT, linked if len(linked) > 1 else linked[0])


def hashed_part(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The columns of a stored row that its ``entry_hash`` covers."""
    return {k: row[k] for k in HASHED_COLUMNS}


def recent_audit(conn: Connection, *, limit: int = 200) -> Sequence[RowMapping]:
    """The newest ``limit`` rows, newest first (what an operator reads on the audit page)."""
    return conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)).mappings().all()
