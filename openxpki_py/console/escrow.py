"""What the console shows about escrowed keys: records (never key material) and recovery requests.

The changes (ask, approve, release to the owner) are the escrow's own service functions
(:mod:`openxpki_py.escrow.recovery`); this module only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from ..db.schema import key_escrow, workflow
from ..errors import NotFound
from ..escrow.recovery import READY_FOR_OWNER, WF_TYPE
from ..escrow.service import KeyEscrow, describe

#: Recovery requests still waiting for a person (approvals, the release, or the owner's collection).
OPEN_STATES = ("PENDING_APPROVAL", "APPROVED", "READY_FOR_OWNER")
LIMIT = 200


@dataclass(frozen=True)
class Recovery:
    """A key_recovery workflow as officers see it: who asked why, who approved; never the key."""

    id: int
    state: str
    escrow_id: int
    owner: str
    requested_by: str
    reason: str
    approvals: tuple[dict[str, Any], ...]
    approvals_required: int
    created_at: Any
    released: dict[str, Any] | None = None  # by whom, when (to the owner)
    collect_by: Any = None  # READY_FOR_OWNER: when it expires uncollected
    collected_at: str | None = None  # by the owner; never what they received

    def approved_by(self, login: str) -> bool:
        return any(a.get("by") == login for a in self.approvals)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "escrow_id": self.escrow_id, "owner": self.owner,
                "requested_by": self.requested_by, "reason": self.reason, "approvals": list(self.approvals),
                "approvals_required": self.approvals_required, "created_at": self.created_at,
                "released": self.released, "collect_by": self.collect_by, "collected_at": self.collected_at}


def records(db: Engine, owner: str | None = None) -> list[dict[str, Any]]:
    """Escrow records, newest first (a person's key history with ``owner``)."""
    with db.connect() as conn:
        if owner is not None:
            return KeyEscrow.history(conn, owner)
        rows = conn.execute(select(key_escrow).order_by(key_escrow.c.id.desc()).limit(LIMIT)).mappings()
        return [describe(r) for r in rows]


def record(db: Engine, escrow_id: int) -> dict[str, Any]:
    with db.connect() as conn:
        return describe(KeyEscrow.record(conn, escrow_id))


def recoveries(db: Engine, engine: Any, *, open_only: bool = True, escrow_id: int | None = None) -> list[Recovery]:
    """Recovery requests, newest first: the open ones, or all of one escrowed key."""
    query = select(workflow.c.id).where(workflow.c.wf_type == WF_TYPE).order_by(workflow.c.id.desc()).limit(LIMIT)
    if open_only:
        query = query.where(workflow.c.state.in_(OPEN_STATES))
    with db.connect() as conn:
        ids = list(conn.execute(query).scalars())
    found = [_recovery(engine.get(i)) for i in ids]
    return [r for r in found if escrow_id is None or r.escrow_id == escrow_id]


def recovery(engine: Any, wf_id: int) -> Recovery:
    """One recovery request; any other workflow is "not found" here."""
    wf = engine.get(wf_id)
    if wf.wf_type != WF_TYPE:
        raise NotFound(f"no recovery request {wf_id}", code="escrow.recovery_not_found")
    return _recovery(wf)


def _recovery(wf: Any) -> Recovery:
    ctx = wf.context
    return Recovery(id=wf.id, state=wf.state, escrow_id=int(ctx.get("escrow_id", 0)), owner=str(ctx.get("owner", "")),
                    requested_by=wf.creator, reason=str(ctx.get("reason", "")),
                    approvals=tuple(ctx.get("approvals", [])),
                    approvals_required=int(ctx.get("approvals_required", 2)), created_at=wf.created_at,
                    released=ctx.get("released"), collect_by=wf.wake_at if wf.state == READY_FOR_OWNER else None,
                    collected_at=ctx.get("collected", {}).get("at"))
