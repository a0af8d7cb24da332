"""The web layer's narrow view of the workflow engine.

Pages need to start a workflow and show where it stands; nothing more.
Keeping that behind :class:`WorkflowGateway` lets the web layer run (and be
tested) before and independently of the engine's richer interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class WorkflowSummary:
    id: int
    wf_type: str
    state: str
    proc_state: str
    creator: str


class WorkflowGateway(Protocol):
    def has_type(self, wf_type: str) -> bool: ...

    def start(self, wf_type: str, *, actor: str, role: str) -> WorkflowSummary: ...

    def get(self, wf_id: int) -> WorkflowSummary: ...


def _summary(view: Any) -> WorkflowSummary:
    return WorkflowSummary(id=int(view.id), wf_type=str(view.wf_type), state=str(view.state),
                           proc_state=str(view.proc_state), creator=str(view.creator))


class EngineGateway:
    """Adapts :class:`openxpki_py.workflow.engine.WorkflowEngine` to :class:`WorkflowGateway`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def has_type(self, wf_type: str) -> bool:
        return wf_type in self.engine.definitions.definitions

    def start(self, wf_type: str, *, actor: str, role: str) -> WorkflowSummary:
        return _summary(self.engine.start(wf_type, actor=actor, role=role))

    def get(self, wf_id: int) -> WorkflowSummary:
        return _summary(self.engine.summary(wf_id))  # the row is all a summary shows
