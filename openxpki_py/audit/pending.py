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

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Text, cast, delete, func, select, union_all
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..db.schema import audit_log, audit_pending
from ..errors import StorageError
from .chain import _queued_in, defers_chaining, hashed_part, link_rows, lock_chain

log = logging.getLogger(__name__)

# Rows moved per statement pair: Oracle takes at most 1000 values in an IN list.
_BATCH = 1000
_QUEUED = select(audit_pending).order_by(audit_pending.c.id).limit(_BATCH)
_ANY_QUEUED = select(audit_pending.c.id).limit(1)


#: How long a checkpoint waits for audited transactions still running (seconds): see :func:`settle_queue`.
QUEUE_SETTLE_SECONDS = 10


def settle_queue(conn: Connection) -> None:
    """Wait until no transaction holds queued, uncommitted audit rows; keep new ones out until ``conn`` ends.

    A checkpoint does this before it chains and signs.  Without it, a
    transaction that queued its row (dated then) before the checkpoint and
    committed after it would be chained after the checkpoint, and a row
    dated before a checkpoint it follows is what verify calls backdated.
    Queuing a row takes ROW EXCLUSIVE on ``audit_pending``; SHARE conflicts
    with it on PostgreSQL and Oracle alike.  Call it holding the chain's
    lock, which chainers take first too, so that neither waits for the other
    in the opposite order.  After :data:`QUEUE_SETTLE_SECONDS` it gives up
    (StorageError): audited actions queue behind it meanwhile.
    """
    if not defers_chaining(conn):
        return
    try:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(QUEUE_SETTLE_SECONDS * 1000)}ms'")
            conn.exec_driver_sql("LOCK TABLE audit_pending IN SHARE MODE")
        else:
            conn.exec_driver_sql(f"LOCK TABLE audit_pending IN SHARE MODE WAIT {int(QUEUE_SETTLE_SECONDS)}")
    except DBAPIError as exc:
        raise StorageError(
            f"audit checkpoint not written: audited transactions were still running after {QUEUE_SETTLE_SECONDS} s "
            "(a checkpoint signs only rows whose transactions have ended); the worker tries again at its next "
            "round, or run `openxpki-py audit checkpoint` again") from exc


def chain_locked(conn: Connection) -> int:
    """Chain every queued row committed so far, in id order; the caller holds :func:`lock_chain`.

    Returns how many rows were chained.  A row committed after a batch was
    read stays queued for the next caller: only the ids read are deleted.
    """
    if not defers_chaining(conn):
        return 0
    moved = 0
    while True:
        try:
            rows = conn.execute(_QUEUED).mappings().all()
        except (ValueError, TypeError) as exc:  # a column the row's type cannot read back (not SQL's fault)
            raise StorageError(_unreadable_rows(conn, exc)) from exc
        if not rows:
            return moved
        link_rows(conn, [hashed_part(r) for r in rows])
        conn.execute(delete(audit_pending).where(audit_pending.c.id.in_([int(r["id"]) for r in rows])))
        moved += len(rows)
        if len(rows) < _BATCH:
            return moved


def _unreadable_rows(conn: Connection, exc: Exception) -> str:
    """Which queued rows cannot be read (their ids), for a DBA to repair or delete."""
    bad = []
    for row_id, details in conn.execute(select(audit_pending.c.id, cast(audit_pending.c.details, Text))
                                        .order_by(audit_pending.c.id)):
        try:
            json.loads(details) if details is not None else None
        except ValueError:
            bad.append(str(row_id))
    which = f"row(s) {', '.join(bad[:20])}" if bad else "a row"
    return (f"audit_pending {which} cannot be read ({exc}): every queued row waits behind it; a DBA must repair "
            "or delete it (and record why)")


#: How long a request waits for the chain's lock after its work (seconds): a checkpoint holds it while
#: the HSM signs and while it waits for audited transactions; past that the worker chains the rows.
REQUEST_CHAIN_WAIT_SECONDS = 2


def chain_pending(engine: Engine, *, only_if_any: bool = False, wait_seconds: float | None = None) -> int:
    """Chain the queued rows in one transaction of their own (nothing to do on SQLite).

    ``only_if_any`` first looks without the lock (the worker's round, where
    there is usually nothing): an idle node then never takes the chain's lock.
    ``wait_seconds``: give up (a database error) rather than wait longer for the lock (PostgreSQL).
    """
    if not defers_chaining(engine):
        return 0
    if only_if_any:
        with engine.connect() as conn:
            if conn.execute(_ANY_QUEUED).first() is None:
                return 0
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql" and wait_seconds is not None:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(wait_seconds * 1000)}ms'")
        lock_chain(conn, wait_seconds=wait_seconds)
        return chain_locked(conn)


def chain_quietly(engine: Engine, *, only_if_any: bool = False) -> str | None:
    """:func:`chain_pending` for a caller whose own work is done or must go on; what went wrong, or None.

    Never raises.  The actions are committed either way; a row left queued is
    chained by the next caller or the worker's round, and ``audit verify``
    reports it until then.  Not only database errors: one queued row that
    cannot be read (hand-made, a half-restored dump) must not turn every
    audited request into a 500, stop the workers or crash ``audit verify``.
    """
    try:
        chain_pending(engine, only_if_any=only_if_any)
        return None
    except Exception as exc:  # noqa: BLE001 - see above
        return _chaining_failed(exc)


def chain_queued() -> int:
    """Chain what this context (request, worker round, command) queued, once its work has committed.

    Returns how many rows were chained; never raises (see :func:`chain_quietly`).
    """
    engines = _queued_in.get()
    if not engines:
        return 0
    _queued_in.set(())
    moved = 0
    for engine in engines:
        try:
            # The answer waits for this: not behind a checkpoint for long; the worker chains what is left.
            moved += chain_pending(engine, wait_seconds=REQUEST_CHAIN_WAIT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - see chain_quietly
            _chaining_failed(exc)
    return moved


def chain_before_verify(engine: Engine) -> list[str]:
    """Chain what committed until now, so that verify checks it as chained; the warning for the report if that failed."""
    failure = chain_quietly(engine)
    if failure is None:
        return []
    return [f"the queued audit rows could not be chained ({failure}): they stay in audit_pending, unchained, "
            "until the cause is fixed (the server log has the details; a row there that cannot be read must be "
            "repaired or removed by a DBA)"]


def _chaining_failed(exc: Exception) -> str:
    log.error("audit rows left queued in audit_pending: chaining failed: %s", getattr(exc, "message", exc),
              exc_info=not isinstance(exc, (SQLAlchemyError, StorageError)))
    return str(getattr(exc, "message", exc))


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
