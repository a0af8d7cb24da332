"""Work that needs an operator: workflows in ``exception``, or past their deadline with an error.

Retry and fail are the engine's own (:meth:`WorkflowEngine.retry` /
:meth:`~WorkflowEngine.fail`, the same that ``openxpki-py workflow retry /
fail`` call); this module only finds the workflows and shows their context
without secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Engine, RowMapping

from ..db.schema import workflow
from . import policy
from .revocation import clean_comment
from .search import Page, paged

if TYPE_CHECKING:
    from ..workflow.definition import WorkflowDefinition
    from ..workflow.engine import WorkflowEngine
    from ..workflow.view import WorkflowView

OPEN_STATES = ("running", "manual", "waiting", "retry")
HIDDEN = "(hidden: secret)"
# Context keys that hold or derive from a secret, whatever the definition
# says: a PIN, PUK, admin key, password, enrollment code or credential is
# never shown, even to an operator (secret *inputs* never reach the context
# at all: the engine refuses them, workflow/context.py).
SECRET_KEY = re.compile(r"(^|_)(pin|puk|so_pin|password|passphrase|secret|credential|code|otp|admin_key|"
                        r"management_key|private_key)(_|$)", re.IGNORECASE)


def stuck_query(now: datetime) -> Any:
    """Exception, or an open workflow whose deadline passed while it carries an error."""
    return or_(workflow.c.proc_state == "exception",
               and_(workflow.c.proc_state.in_(OPEN_STATES), workflow.c.last_error.is_not(None),
                    workflow.c.wake_at < now))


def stuck_workflows(db: Engine, number: int = 1, *, now: datetime | None = None) -> Page[RowMapping]:
    now = now or datetime.now(timezone.utc)
    w = workflow.c
    query = select(w.id, w.wf_type, w.state, w.proc_state, w.creator, w.retry_count, w.last_error, w.wake_at,
                   w.updated_at).where(stuck_query(now)).order_by(w.updated_at, w.id)
    with db.connect() as conn:
        return paged(conn, query, number)


def secret_keys(definition: WorkflowDefinition | None) -> frozenset[str]:
    """The definition's fields of type ``secret`` (start and every action)."""
    if definition is None:
        return frozenset()
    fields = [*definition.start_fields, *(f for a in definition.actions.values() for f in a.fields)]
    return frozenset(f.name for f in fields if f.secret)


def shown_context(view: WorkflowView) -> dict[str, Any]:
    """The context as an operator may see it: secret keys replaced, sorted by key."""
    hidden = secret_keys(view.definition)
    return {key: (HIDDEN if key in hidden or SECRET_KEY.search(key) else _scrub(value))
            for key, value in sorted(view.context.items())}


def _scrub(value: Any) -> Any:
    """Nested maps (e.g. per-certificate task records) may carry secret keys too."""
    if isinstance(value, Mapping):
        return {k: (HIDDEN if SECRET_KEY.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def retry(db: Engine, engine: WorkflowEngine, wf_id: int, *, actor: str, role: str,
          comment: str | None) -> WorkflowView:
    policy.require(db, "workflow.retry", actor=actor, role=role, target=f"workflow:{wf_id}")
    return engine.retry(wf_id, actor=actor, role=role, note=clean_comment(comment))


def fail(db: Engine, engine: WorkflowEngine, wf_id: int, *, actor: str, role: str, comment: str | None) -> WorkflowView:
    policy.require(db, "workflow.fail", actor=actor, role=role, target=f"workflow:{wf_id}")
    return engine.fail(wf_id, actor=actor, role=role, reason=clean_comment(comment) or "")

