"""Chaining the audit rows PostgreSQL and Oracle queue in ``audit_pending``.

An audited transaction there inserts its rows into ``audit_pending`` and
commits without touching the chain (:func:`.chain.append_audit`).  Right
after the commit, the code that ran it calls :func:`chain_queued`: one short
transaction takes the chain's lock, moves every committed queued row into
``audit_log`` in id order and deletes exactly those.  Callers that arrive
together queue on the lock and the first one takes the whole batch, so N
audited commits cost one serialised commit instead of N (issue #15).

Who calls it: the web app after each request, the worker after each round
(which also chains rows whose process died between commit and chaining),
the CLI after each command, the checkpoint writer before it signs a head.
Until then a queued row is committed but not in the chain: readers that
decide something from the trail use :func:`count_audit` and
:func:`last_audit_time`, which see both tables in one statement.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select, union_all
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..db.schema import audit_log, audit_pending
from .chain import _queued_in, defers_chaining, hashed_part, link_rows, lock_chain

log = logging.getLogger(__name__)

# Rows moved per statement pair: Oracle takes at most 1000 values in an IN list.
_BATCH = 1000
_QUEUED = select(audit_pending).order_by(audit_pending.c.id).limit(_BATCH)
_ANY_QUEUED = select(audit_pending.c.id).limit(1)


def chain_locked(conn: Connection) -> int:
    """Chain every queued row committed so far, in id order; the caller holds :func:`lock_chain`.

    Returns how many rows were chained.  A row committed after a batch was
    read stays queued for the next caller: only the ids read are deleted.
    """
    if not defers_chaining(conn):
        return 0
    moved = 0
    while True:
        rows = conn.execute(_QUEUED).mappings().all()
        if not rows:
            return moved
        link_rows(conn, [hashed_part(r) for r in rows])
        conn.execute(delete(audit_pending).where(audit_pending.c.id.in_([int(r["id"]) for r in rows])))
        moved += len(rows)
        if len(rows) < _BATCH:
            return moved


def chain_pending(engine: Engine, *, only_if_any: bool = False) -> int:
    """Chain the queued rows in one transaction of their own (nothing to do on SQLite).

    ``only_if_any`` first looks without the lock (the worker's round, where
    there is usually nothing): an idle node then never takes the chain's lock.
    """
    if not defers_chaining(engine):
        return 0
    if only_if_any:
        with engine.connect() as conn:
            if conn.execute(_ANY_QUEUED).first() is None:
                return 0
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Moving rows that are already durable in audit_pending needs no flush
            # of its own: lost in a crash, the move is undone whole and done again.
            # Any later durable commit (a checkpoint's, for one) flushes it too.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        lock_chain(conn)
        return chain_locked(conn)


def chain_queued() -> int:
    """Chain what this context (request, worker round, command) queued, once its work has committed.

    Never raises: the action is committed either way, and a row left queued
    is chained by the next caller or the worker's round (``audit verify``
    reports it until then).
    """
    engines = _queued_in.get()
    if not engines:
        return 0
    _queued_in.set(())
    moved = 0
    for engine in engines:
        try:
            moved += chain_pending(engine)
        except SQLAlchemyError as exc:
            log.warning("audit rows left queued for the worker: chaining failed: %s", exc)
    return moved


def queued_backlog(conn: Connection) -> tuple[int, datetime | None]:
    """(queued rows, the oldest one's logged_at) as ``conn`` sees them now."""
    count, oldest = conn.execute(select(func.count(), func.min(audit_pending.c.logged_at))).one()
    return int(count), oldest


# --- reading the trail: chained and queued rows alike ----------------------------------


def _matching(conn: Connection, column: str, *, event: str, target: str | None,
              outcome: str | None) -> Select[tuple[Any]]:
    parts = []
    for table in (audit_log, audit_pending) if defers_chaining(conn) else (audit_log,):
        query = select(table.c[column]).where(table.c.event == event)
        if target is not None:
            query = query.where(table.c.target == target)
        if outcome is not None:
            query = query.where(table.c.outcome == outcome)
        parts.append(query)
    # One statement: two would let a concurrent chaining move a row between them, unseen by both.
    return union_all(*parts) if len(parts) > 1 else parts[0]  # type: ignore[return-value]


def count_audit(conn: Connection, *, event: str, target: str | None = None, outcome: str | None = "ok") -> int:
    """How many committed audit rows (chained or queued) record ``event`` (about ``target``; None: any)."""
    rows = _matching(conn, "id", event=event, target=target, outcome=outcome).subquery()
    return int(conn.execute(select(func.count()).select_from(rows)).scalar_one())


def last_audit_time(conn: Connection, *, event: str, target: str | None = None,
                    outcome: str | None = "ok") -> datetime | None:
    """When ``event`` (about ``target``) was last recorded, chained or queued; None if never."""
    rows = _matching(conn, "logged_at", event=event, target=target, outcome=outcome).subquery()
    value: datetime | None = conn.execute(select(func.max(rows.c.logged_at))).scalar()
    return value
