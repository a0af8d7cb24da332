"""Read-only snapshots of workflows, as callers (web, CLI, API) see them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import RowMapping

from .definition import ActionSpec, WorkflowDefinition


@dataclass(frozen=True)
class HistoryEntry:
    action: str
    from_state: str
    to_state: str
    actor: str
    role: str
    outcome: str  # ok | failed
    note: str | None
    logged_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> HistoryEntry:
        return cls(row["action"], row["from_state"], row["to_state"], row["actor"], row["role_name"],
                   row["outcome"], row["note"], row["logged_at"])

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "from": self.from_state, "to": self.to_state, "actor": self.actor,
                "role": self.role, "outcome": self.outcome, "note": self.note,
                "time": self.logged_at.isoformat()}


@dataclass(frozen=True)
class WorkflowSummary:
    """One row of a search result."""

    id: int
    wf_type: str
    state: str
    proc_state: str  # running|manual|waiting|retry|exception|finished|failed
    version: int
    creator: str
    role: str
    parent_id: int | None
    wake_at: datetime | None
    retry_count: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> WorkflowSummary:
        return cls(
            id=int(row["id"]), wf_type=row["wf_type"], state=row["state"], proc_state=row["proc_state"],
            version=int(row["version"]), creator=row["creator"], role=row["creator_role"],
            parent_id=None if row["parent_id"] is None else int(row["parent_id"]), wake_at=row["wake_at"],
            retry_count=int(row["retry_count"]), last_error=row["last_error"],
            created_at=row["created_at"], updated_at=row["updated_at"],
        )

    @property
    def final(self) -> bool:
        return self.proc_state in ("finished", "failed")

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "type": self.wf_type, "state": self.state, "proc_state": self.proc_state,
            "version": self.version, "creator": self.creator, "role": self.role, "parent_id": self.parent_id,
            "wake_at": self.wake_at.isoformat() if self.wake_at else None, "retry_count": self.retry_count,
            "last_error": self.last_error, "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class WorkflowState(WorkflowSummary):
    """A workflow's row and context: what a page or an agent needs to decide the next step.

    No history and no search attributes: reading them costs two queries that
    such callers would throw away (:meth:`.WorkflowEngine.current`).
    """

    context: Mapping[str, Any] = field(default_factory=dict)
    definition: WorkflowDefinition | None = field(default=None, repr=False, compare=False)

    def available_actions(self, role: str) -> list[ActionSpec]:
        """Manual actions ``role`` may run now, with their input field specs.

        Empty unless the workflow waits for a person (``proc_state`` manual).
        """
        if self.proc_state != "manual" or self.definition is None:
            return []
        return self.definition.manual_actions(self.state, role)

    def as_json(self) -> dict[str, Any]:
        data = super().as_json()
        data["context"] = dict(self.context)
        return data


@dataclass(frozen=True)
class WorkflowView(WorkflowState):
    """A workflow with its context, history and search attributes."""

    history: tuple[HistoryEntry, ...] = ()
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = super().as_json()
        data["history"] = [h.as_json() for h in self.history]
        data["attributes"] = {k: list(v) for k, v in self.attributes.items()}
        return data
