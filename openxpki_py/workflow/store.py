"""SQL access for the four workflow tables; nothing here decides anything.

Every function takes the caller's connection so that a whole action (row,
context, attributes, history, audit) commits or rolls back together.

The statements every workflow step runs are built once, here, with bound
parameters: building a SQLAlchemy statement per call (coercing each clause,
then computing its cache key) cost about as much as executing it
(bench/results/, issue #15).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import json

from sqlalchemy import Text, and_, bindparam, delete, exists, func, insert, or_, select, type_coerce, update
from sqlalchemy.engine import Connection, Engine, RowMapping

from ..db.schema import workflow, workflow_attribute, workflow_context, workflow_history, workflow_singleton
from .errors import UnknownWorkflow, WorkflowConflict

FINAL_PROC_STATES = ("finished", "failed")
ATTRIBUTE_MAX = 256
IN_LIST_MAX = 500

# Bound parameter names never equal a column name: update() takes the SET
# columns from the execute parameters (see update_workflow).
_BY_ID = select(workflow).where(workflow.c.id == bindparam("b_id"))
_BY_ID_LOCKED = _BY_ID.with_for_update()
# The row and its context in one statement: every step needs both (an empty context gives one row of NULLs).
# The values come as their JSON text: the step compares against it to find what changed (no re-encoding).
_WITH_CONTEXT = (select(workflow, workflow_context.c.ctx_key,
                        type_coerce(workflow_context.c.ctx_value, Text).label("ctx_json"))
                 .select_from(workflow.outerjoin(workflow_context, workflow_context.c.workflow_id == workflow.c.id))
                 .where(workflow.c.id == bindparam("b_id")))
_WITH_CONTEXT_LOCKED = _WITH_CONTEXT.with_for_update(of=workflow.c.id)  # the row; Oracle names a column
_CONTEXT = select(workflow_context.c.ctx_key, workflow_context.c.ctx_value).where(
    workflow_context.c.workflow_id == bindparam("b_id"))
_CONTEXT_DELETE = delete(workflow_context).where(workflow_context.c.workflow_id == bindparam("b_id"),
                                                 workflow_context.c.ctx_key.in_(bindparam("b_keys", expanding=True)))
# Values arrive as canonical JSON text (canonical_json, the very text JSONText would write): the context
# encoded them already to see what changed.
_CONTEXT_INSERT = insert(workflow_context).values(ctx_value=bindparam("b_json", type_=Text))
_CONTEXT_UPDATE = (update(workflow_context)
                   .where(workflow_context.c.workflow_id == bindparam("b_id"),
                          workflow_context.c.ctx_key == bindparam("b_key"))
                   .values(ctx_value=bindparam("b_json", type_=Text)))
_ATTRIBUTES = (select(workflow_attribute.c.attr_key, workflow_attribute.c.attr_value)
               .where(workflow_attribute.c.workflow_id == bindparam("b_id"))
               .order_by(workflow_attribute.c.attr_key, workflow_attribute.c.attr_value))
_ATTRIBUTES_DELETE = delete(workflow_attribute).where(
    workflow_attribute.c.workflow_id == bindparam("b_id"),
    workflow_attribute.c.attr_key.in_(bindparam("b_keys", expanding=True)))
_ATTRIBUTES_INSERT = insert(workflow_attribute)
# One more value where the key does not have it yet, without reading the values first.
_ATTRIBUTE_ADD = insert(workflow_attribute).from_select(
    ["workflow_id", "attr_key", "attr_value"],
    select(bindparam("b_id", type_=workflow_attribute.c.workflow_id.type),
           bindparam("b_key", type_=workflow_attribute.c.attr_key.type),
           bindparam("b_value", type_=workflow_attribute.c.attr_value.type))
    .where(~exists().where(workflow_attribute.c.workflow_id == bindparam("b_id"),
                           workflow_attribute.c.attr_key == bindparam("b_key"),
                           workflow_attribute.c.attr_value == bindparam("b_value"))))
_HISTORY = select(workflow_history).where(workflow_history.c.workflow_id == bindparam("b_id")).order_by(
    workflow_history.c.id)
_HISTORY_INSERT = insert(workflow_history)
_UPDATE_IF_VERSION = (update(workflow)
                      .where(workflow.c.id == bindparam("b_id"), workflow.c.version == bindparam("b_version"))
                      .values(version=workflow.c.version + 1))
_SINGLETON_RELEASE = delete(workflow_singleton).where(workflow_singleton.c.workflow_id == bindparam("b_id"))
_INSERT = insert(workflow).values(retry_count=0, version=0)  # the other columns from the parameters
_SINGLETON_CLAIM = insert(workflow_singleton)
_SINGLETON_HOLDER = select(workflow_singleton.c.workflow_id).where(
    workflow_singleton.c.wf_type == bindparam("b_type"), workflow_singleton.c.singleton_key == bindparam("b_key"))
_OPEN_SIBLINGS = select(func.count()).select_from(workflow).where(
    workflow.c.parent_id == bindparam("b_parent"), workflow.c.id != bindparam("b_id"),
    workflow.c.proc_state.not_in(FINAL_PROC_STATES))
_CLAIM_WOKEN_PARENT = (update(workflow)
                       .where(workflow.c.id == bindparam("b_id"), workflow.c.proc_state == "waiting")
                       .values(proc_state="running", version=workflow.c.version + 1))
_CHILDREN = (select(workflow.c.id, workflow.c.wf_type, workflow.c.state, workflow.c.proc_state,
                    workflow.c.last_error)
             .where(workflow.c.parent_id == bindparam("b_id")).order_by(workflow.c.id))


def locks_rows(conn: Connection | Engine) -> bool:
    """SQLite serialises writers with BEGIN IMMEDIATE; others lock rows."""
    return conn.dialect.name != "sqlite"


def insert_workflow(conn: Connection, **values: Any) -> int:
    result = conn.execute(_INSERT, values)
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def lock_workflow(conn: Connection, wf_id: int) -> RowMapping:
    """The row, locked against concurrent writers until the transaction ends.

    On PostgreSQL/Oracle this is ``FOR UPDATE``: a second execution of the
    same workflow waits here and then sees the first one's commit, so the
    loser never runs the activity.  The version check on update stays as a
    second line of defence.
    """
    query = _BY_ID_LOCKED if locks_rows(conn) else _BY_ID
    row = conn.execute(query, {"b_id": wf_id}).mappings().first()
    if row is None:
        raise UnknownWorkflow(f"workflow {wf_id} does not exist")
    return row


def canonical_json(value: Any) -> str:
    """The text a context value is stored as (db.types.JSONText writes the same)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def lock_workflow_with_context(conn: Connection, wf_id: int) -> tuple[RowMapping, dict[str, str]]:
    """:func:`lock_workflow` and the context as stored JSON text, in one statement (the row locked alike)."""
    return _with_context(conn, wf_id, _WITH_CONTEXT_LOCKED if locks_rows(conn) else _WITH_CONTEXT)


def read_workflow_with_context(conn: Connection, wf_id: int) -> tuple[RowMapping, dict[str, str]]:
    """:func:`lock_workflow_with_context` without the lock, for a transaction that only reads."""
    return _with_context(conn, wf_id, _WITH_CONTEXT)


def _with_context(conn: Connection, wf_id: int, query: Any) -> tuple[RowMapping, dict[str, str]]:
    rows = conn.execute(query, {"b_id": wf_id}).mappings().all()
    if not rows:
        raise UnknownWorkflow(f"workflow {wf_id} does not exist")
    return rows[0], {r["ctx_key"]: r["ctx_json"] for r in rows if r["ctx_key"] is not None}


def read_workflow(conn: Connection, wf_id: int) -> RowMapping:
    row = conn.execute(_BY_ID, {"b_id": wf_id}).mappings().first()
    if row is None:
        raise UnknownWorkflow(f"workflow {wf_id} does not exist")
    return row


def read_workflows(conn: Connection, ids: Sequence[int]) -> list[RowMapping]:
    """The rows of ``ids`` that exist, in the order asked for (one query, however many)."""
    rows = {int(r["id"]): r for r in _in_chunks(conn, select(workflow), workflow.c.id, ids)}
    return [rows[i] for i in ids if i in rows]


def _in_chunks(conn: Connection, query: Any, column: Any, ids: Sequence[int]) -> list[RowMapping]:
    """``query WHERE column IN ids``, split so that no IN list passes Oracle's 1000 items."""
    found: list[RowMapping] = []
    for start in range(0, len(ids), IN_LIST_MAX):
        found.extend(conn.execute(query.where(column.in_(ids[start:start + IN_LIST_MAX]))).mappings())
    return found


def update_workflow(conn: Connection, wf_id: int, version: int, *, child: bool = False, **values: Any) -> int:
    """Write ``values`` if the row still has ``version``; return the new version.

    A workflow that reaches a final state gives up its singleton key (in the
    same transaction), so the next start for that key is a new workflow.  A
    ``child`` (it has a parent) never holds one: only top-level workflows
    claim keys (engine.open_or_start), so there is nothing to give up.
    """
    result = conn.execute(_UPDATE_IF_VERSION, {"b_id": wf_id, "b_version": version, **values})
    if result.rowcount != 1:
        raise WorkflowConflict(f"workflow {wf_id} was changed by someone else; reload it and try again")
    if values.get("proc_state") in FINAL_PROC_STATES and not child:
        conn.execute(_SINGLETON_RELEASE, {"b_id": wf_id})
    return version + 1


def claim_singleton(conn: Connection, wf_type: str, key: str, wf_id: int) -> None:
    """Make ``wf_id`` the open workflow of ``wf_type`` for ``key``; IntegrityError if another is."""
    conn.execute(_SINGLETON_CLAIM, {"wf_type": wf_type, "singleton_key": key, "workflow_id": wf_id})


def singleton_holder(conn: Connection, wf_type: str, key: str) -> int | None:
    """The open workflow of ``wf_type`` for ``key``, if any."""
    found = conn.execute(_SINGLETON_HOLDER, {"b_type": wf_type, "b_key": key}).scalar()
    return int(found) if found is not None else None


def load_context(conn: Connection, wf_id: int) -> dict[str, Any]:
    rows = conn.execute(_CONTEXT, {"b_id": wf_id})
    return {key: value for key, value in rows}


def load_contexts(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Workflow id → context for many workflows at once (a list page: no query per row)."""
    found: dict[int, dict[str, Any]] = {i: {} for i in ids}
    for row in _in_chunks(conn, select(workflow_context), workflow_context.c.workflow_id, ids):
        found[int(row["workflow_id"])][row["ctx_key"]] = row["ctx_value"]
    return found


def save_context(conn: Connection, wf_id: int, changed: Mapping[str, Any], deleted: Iterable[str],
                 stored: Iterable[str] | None = None) -> None:
    """Write changed keys, remove deleted ones; ``stored``: keys already in the table (None: unknown)."""
    save_context_json(conn, wf_id, {k: canonical_json(v) for k, v in changed.items()}, deleted, stored)


def save_context_json(conn: Connection, wf_id: int, changed: Mapping[str, str], deleted: Iterable[str],
                      stored: Iterable[str] | None = None) -> None:
    """:func:`save_context` for values already in their :func:`canonical_json` text.

    With ``stored`` known (the caller loaded the context under the workflow's
    lock), a changed key that exists is updated in place and a new one
    inserted: one statement per kind instead of a delete and an insert.
    """
    if stored is None:
        # Delete + insert is the one upsert all three databases spell the same.
        keys = set(deleted) | set(changed)
        existing: dict[str, str] = {}
        new = dict(changed)
    else:
        keys = set(deleted)
        known = set(stored)
        existing = {k: v for k, v in changed.items() if k in known}
        new = {k: v for k, v in changed.items() if k not in known}
    if keys:
        conn.execute(_CONTEXT_DELETE, {"b_id": wf_id, "b_keys": sorted(keys)})
    if existing:
        conn.execute(_CONTEXT_UPDATE, [{"b_id": wf_id, "b_key": k, "b_json": v} for k, v in existing.items()])
    if new:
        conn.execute(_CONTEXT_INSERT, [{"workflow_id": wf_id, "ctx_key": k, "b_json": v} for k, v in new.items()])


def load_attribute_sets(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, list[str]]]:
    """Workflow id → search attributes for many workflows at once."""
    found: dict[int, dict[str, list[str]]] = {i: {} for i in ids}
    query = select(workflow_attribute).order_by(workflow_attribute.c.attr_key, workflow_attribute.c.attr_value)
    for row in _in_chunks(conn, query, workflow_attribute.c.workflow_id, ids):
        found[int(row["workflow_id"])].setdefault(row["attr_key"], []).append(row["attr_value"])
    return found


def load_attributes(conn: Connection, wf_id: int) -> dict[str, list[str]]:
    rows = conn.execute(_ATTRIBUTES, {"b_id": wf_id})
    found: dict[str, list[str]] = {}
    for key, value in rows:
        found.setdefault(key, []).append(value)
    return found


def replace_attributes(conn: Connection, wf_id: int, values: Mapping[str, Sequence[str]]) -> None:
    """Set each key's values (an empty list removes the key)."""
    if not values:
        return
    conn.execute(_ATTRIBUTES_DELETE, {"b_id": wf_id, "b_keys": list(values)})
    rows = [
        {"workflow_id": wf_id, "attr_key": k, "attr_value": v}
        for k, vs in values.items()
        for v in sorted(set(vs))
    ]
    if rows:
        conn.execute(_ATTRIBUTES_INSERT, rows)


def add_attributes(conn: Connection, wf_id: int, values: Mapping[str, Sequence[str]]) -> None:
    """Add each key's values to those it has (a value it has already is left as it is)."""
    for key, vs in values.items():
        for v in sorted(set(vs)):
            conn.execute(_ATTRIBUTE_ADD, {"b_id": wf_id, "b_key": key, "b_value": v})


def add_history(conn: Connection, wf_id: int, *, action: str, from_state: str, to_state: str, actor: str,
                role: str, outcome: str, note: str | None, now: datetime) -> None:
    conn.execute(_HISTORY_INSERT, {
        "workflow_id": wf_id, "action": action, "from_state": from_state, "to_state": to_state, "actor": actor,
        "role_name": role, "outcome": outcome, "note": note, "logged_at": now,
    })


def load_history(conn: Connection, wf_id: int) -> Sequence[RowMapping]:
    return conn.execute(_HISTORY, {"b_id": wf_id}).mappings().all()


def load_histories(conn: Connection, ids: Sequence[int]) -> dict[int, list[RowMapping]]:
    """Workflow id → history rows (oldest first) for many workflows at once."""
    found: dict[int, list[RowMapping]] = {i: [] for i in ids}
    query = select(workflow_history).order_by(workflow_history.c.id)
    for row in _in_chunks(conn, query, workflow_history.c.workflow_id, ids):
        found[int(row["workflow_id"])].append(row)
    return found


def load_children(conn: Connection, parent_id: int) -> Sequence[RowMapping]:
    return conn.execute(_CHILDREN, {"b_id": parent_id}).mappings().all()


def open_siblings(conn: Connection, parent_id: int, except_id: int) -> int:
    """How many other children of ``parent_id`` are not final yet."""
    return int(conn.execute(_OPEN_SIBLINGS, {"b_parent": parent_id, "b_id": except_id}).scalar_one())


def search(conn: Connection, *, wf_type: str | None, state: str | None, proc_state: str | None,
           attributes: Mapping[str, str], limit: int) -> Sequence[RowMapping]:
    query = select(workflow)
    if wf_type is not None:
        query = query.where(workflow.c.wf_type == wf_type)
    if state is not None:
        query = query.where(workflow.c.state == state)
    if proc_state is not None:
        query = query.where(workflow.c.proc_state == proc_state)
    for key, value in attributes.items():
        match = select(workflow_attribute.c.workflow_id).where(
            workflow_attribute.c.attr_key == key, workflow_attribute.c.attr_value == value
        )
        query = query.where(workflow.c.id.in_(match))
    return conn.execute(query.order_by(workflow.c.id.desc()).limit(limit)).mappings().all()


# --- worker claims -------------------------------------------------------------

def _due(now: datetime) -> Any:
    """Woken or retry-due workflows, ones whose state's deadline passed, and ones whose runner's lease ran out."""
    return or_(
        and_(workflow.c.proc_state.in_(("waiting", "retry", "manual")), workflow.c.wake_at <= now),
        and_(workflow.c.proc_state == "running", workflow.c.lease_until < now),
    )


def due_workflows(conn: Connection, now: datetime, limit: int) -> Sequence[RowMapping]:
    """Candidates for a claim, oldest first.

    On PostgreSQL/Oracle, rows another worker is claiming right now are
    skipped (``SKIP LOCKED``) instead of waited for.
    """
    query = (
        select(workflow.c.id, workflow.c.version, workflow.c.wf_type, workflow.c.state)
        .where(_due(now))
        .order_by(workflow.c.wake_at, workflow.c.id)
        .limit(limit)
    )
    if locks_rows(conn):
        query = query.with_for_update(skip_locked=True)
    return conn.execute(query).mappings().all()


def claim(conn: Connection, wf_id: int, *, claimant: str, now: datetime, lease_until: datetime) -> bool:
    """Take a due workflow for ``claimant``; False if someone else was first.

    The WHERE repeats the due condition, so of several workers updating the
    same row only one matches — the claim is the row update itself.
    """
    result = conn.execute(
        update(workflow)
        .where(workflow.c.id == wf_id, _due(now))
        .values(proc_state="running", claimed_by=claimant, lease_until=lease_until,
                version=workflow.c.version + 1, updated_at=now)
    )
    return result.rowcount == 1


def claim_woken_parent(conn: Connection, parent_id: int, *, claimant: str, now: datetime,
                       lease_until: datetime) -> bool:
    """A child just finished and was the last open one: take the parent along."""
    result = conn.execute(_CLAIM_WOKEN_PARENT, {"b_id": parent_id, "claimed_by": claimant, "lease_until": lease_until,
                                                "wake_at": now, "updated_at": now})
    return result.rowcount == 1


def release_claims(conn: Connection, ids: Sequence[int], *, claimant: str, now: datetime) -> None:
    """End our leases on claimed workflows we will not run: others may take them now."""
    conn.execute(
        update(workflow)
        .where(workflow.c.id.in_(list(ids)), workflow.c.claimed_by == claimant, workflow.c.proc_state == "running")
        .values(lease_until=now)
    )
