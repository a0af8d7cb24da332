"""The workflow engine's public face: start, execute, get, search, retry, fail.

Each call that changes a workflow is one transaction (plus one per
automatic step that follows, each of them its own transaction).  The row
is locked and its version checked, so of two concurrent executions of the
same workflow exactly one commits; the other gets :class:`WorkflowConflict`
(or :class:`ActionNotAvailable` when it did not say which version it saw).
Whatever the call sets in motion — automatic actions, forked children, a
parent woken by its last child — runs right after, in the same request;
a crash in between only delays it until a worker reclaims the lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .. import roles
from ..audit import append_audit
from ..db.engine import read_only
from ..errors import OpenXPKIError, StorageError, WorkflowError
from . import store
from .config import WorkflowConfig
from .definition import DefinitionRegistry, WorkflowDefinition
from .errors import AccessDenied, ActionNotAvailable, WorkflowConflict
from .registry import Registry
from .run import Run
from .steps import Outcome, Rehearsal, Stepper
from .view import HistoryEntry, WorkflowState, WorkflowSummary, WorkflowView

log = logging.getLogger(__name__)

WORKER_ACTOR = "worker"
SYSTEM_ROLE = roles.SYSTEM


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class WorkflowEngine:
    def __init__(self, db: Engine, definitions: DefinitionRegistry, services: Any = None, *,
                 config: WorkflowConfig | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.definitions = definitions
        self.services = services
        self.config = config or WorkflowConfig()
        self.clock = clock
        self.stepper = Stepper(definitions, services, self.config, clock)

    @classmethod
    def from_config(cls, db: Engine, config: WorkflowConfig, services: Any = None, *,
                    folders: Iterable[Path], registry: Registry) -> WorkflowEngine:
        """The engine with the caller's (the domains') folders, then the config's own.

        The config's folders come last, so a site's file replaces a shipped
        type of the same name.
        """
        from .loader import load_definitions

        definitions = load_definitions([*folders, *config.definition_dirs], registry=registry)
        return cls(db, definitions, services, config=config)

    # --- reading -----------------------------------------------------------------

    def get(self, workflow_id: int) -> WorkflowView:
        with read_only(self.db) as conn:
            return self._view(conn, workflow_id)

    def current(self, workflow_id: int) -> WorkflowState:
        """Like :meth:`get` without history and search attributes (two queries instead of four)."""
        with read_only(self.db) as conn:
            row = store.read_workflow(conn, workflow_id)
            context = store.load_context(conn, workflow_id)
        return WorkflowState(**WorkflowSummary.from_row(row).__dict__, context=context,
                             definition=self.definitions.definitions.get(row["wf_type"]))

    def _view(self, conn: Connection, workflow_id: int) -> WorkflowView:
        row = store.read_workflow(conn, workflow_id)
        return self._assemble(row, store.load_context(conn, workflow_id), store.load_history(conn, workflow_id),
                              store.load_attributes(conn, workflow_id))

    def _assemble(self, row: RowMapping, context: dict[str, Any], history: Sequence[RowMapping],
                  attributes: Mapping[str, Sequence[str]]) -> WorkflowView:
        return WorkflowView(
            **WorkflowSummary.from_row(row).__dict__,
            context=context,
            history=tuple(HistoryEntry.from_row(h) for h in history),
            attributes={k: tuple(v) for k, v in attributes.items()},
            definition=self.definitions.definitions.get(row["wf_type"]),
        )

    def get_many(self, workflow_ids: Sequence[int]) -> list[WorkflowView]:
        """Like :meth:`get` for each id (missing ones left out), in four queries however many ids."""
        ids = list(workflow_ids)
        with read_only(self.db) as conn:
            rows = store.read_workflows(conn, ids)
            contexts = store.load_contexts(conn, ids)
            histories = store.load_histories(conn, ids)
            attributes = store.load_attribute_sets(conn, ids)
        return [self._assemble(row, contexts[int(row["id"])], histories[int(row["id"])], attributes[int(row["id"])])
                for row in rows]

    def search(self, *, wf_type: str | None = None, state: str | None = None, proc_state: str | None = None,
               limit: int = 100, **attributes: str) -> list[WorkflowSummary]:
        """Newest first; ``attributes`` match search keys (``user="alice"``)."""
        with read_only(self.db) as conn:
            rows = store.search(conn, wf_type=wf_type, state=state, proc_state=proc_state,
                                attributes=attributes, limit=limit)
            return [WorkflowSummary.from_row(r) for r in rows]

    def summary(self, workflow_id: int) -> WorkflowSummary:
        """The workflow's row only (type, state, creator, version …): no context, history or attributes."""
        with read_only(self.db) as conn:
            return WorkflowSummary.from_row(store.read_workflow(conn, workflow_id))

    def children(self, workflow_id: int) -> list[WorkflowSummary]:
        with read_only(self.db) as conn:
            ids = [int(r["id"]) for r in store.load_children(conn, workflow_id)]
            return [WorkflowSummary.from_row(r) for r in store.read_workflows(conn, ids)]  # one query for all

    # --- changing ----------------------------------------------------------------

    def start(self, wf_type: str, *, actor: str, role: str, context: Mapping[str, Any] | None = None,
              parent_id: int | None = None) -> WorkflowView:
        """Create a workflow (``context`` holds its start fields) and run it as far as it goes.

        For a type with ``one_open_per_creator`` this is :meth:`open_or_start`
        with the actor as key: the actor's unfinished one is returned.
        """
        return self.get(self.launch(wf_type, actor=actor, role=role, context=context, parent_id=parent_id))

    def launch(self, wf_type: str, *, actor: str, role: str, context: Mapping[str, Any] | None = None,
               parent_id: int | None = None) -> int:
        """:meth:`start` for a caller that needs the id only: no read-back (a transaction and four queries less)."""
        definition = self._startable(wf_type, actor, role)
        if definition.one_open_per_creator and parent_id is None:
            return self._open_or_start(definition, actor, actor=actor, role=role, context=context)
        run = Run(actor, role)
        with self._transaction() as conn:
            wf_id, runnable = self.stepper.create(conn, run, definition, context or {}, actor=actor, role=role,
                                                  parent_id=parent_id)
        self._run_new(run, wf_id, runnable)
        return wf_id

    def open_or_start(self, wf_type: str, singleton: str, *, actor: str, role: str,
                      context: Mapping[str, Any] | None = None) -> WorkflowView:
        """The open workflow of ``wf_type`` for ``singleton`` (e.g. a person), or a new one.

        The database decides: the new workflow claims the key in the
        transaction that creates it, so concurrent starts, a crash right after
        one, or reloads while the first cannot proceed all find the same
        workflow.  The key is free again once that workflow is final.
        """
        definition = self._startable(wf_type, actor, role)
        return self.get(self._open_or_start(definition, singleton, actor=actor, role=role, context=context))

    def _open_or_start(self, definition: WorkflowDefinition, singleton: str, *, actor: str, role: str,
                       context: Mapping[str, Any] | None) -> int:
        wf_type = definition.wf_type
        for _ in range(3):  # the holder may end between our insert and our read
            with read_only(self.db) as conn:
                holder = store.singleton_holder(conn, wf_type, singleton)
            if holder is not None:
                return holder
            run = Run(actor, role)
            try:
                with self._transaction() as conn:
                    wf_id, runnable = self.stepper.create(conn, run, definition, context or {}, actor=actor,
                                                          role=role, parent_id=None)
                    store.claim_singleton(conn, wf_type, singleton, wf_id)
            except IntegrityError:
                continue  # another request claimed it first: take theirs
            self._run_new(run, wf_id, runnable)
            return wf_id
        raise WorkflowConflict(f"could not start or find the {wf_type} workflow for {singleton!r}; try again")

    def _startable(self, wf_type: str, actor: str, role: str) -> WorkflowDefinition:
        definition = self.definitions.get(wf_type)
        if role not in definition.start_roles:
            self._refuse(actor, role, "workflow.start", None, f"role {role} may not start {wf_type} workflows",
                         {"type": wf_type})
        return definition

    def _run_new(self, run: Run, wf_id: int, runnable: bool) -> None:
        if runnable:
            run.enqueue(wf_id)
        self.drain(run)

    def execute(self, workflow_id: int, action: str, *, actor: str, role: str,
                inputs: Mapping[str, Any] | None = None, expected_version: int | None = None) -> WorkflowView:
        """Run a manual action as ``actor`` in ``role``; the workflow as it is afterwards.

        ``expected_version`` is the version the caller's form was built from;
        give it whenever a person decided on the basis of what they saw.
        """
        self.act(workflow_id, action, actor=actor, role=role, inputs=inputs, expected_version=expected_version)
        return self.get(workflow_id)

    def act(self, workflow_id: int, action: str, *, actor: str, role: str,
            inputs: Mapping[str, Any] | None = None, expected_version: int | None = None) -> None:
        """:meth:`execute` for a caller that does not show the result: no read-back (five statements less)."""
        run = Run(actor, role)
        refusal: AccessDenied | None = None
        with self._transaction() as conn:
            row, data = store.lock_workflow_with_context(conn, workflow_id)
            if expected_version is not None and int(row["version"]) != expected_version:
                raise WorkflowConflict(
                    f"workflow {workflow_id} changed since you loaded it (version {expected_version}, now "
                    f"{row['version']}, state {row['state']}); reload it and decide again"
                )
            definition = self.definitions.get(row["wf_type"])
            offered = definition.manual_actions(row["state"]) if row["proc_state"] == "manual" else []
            spec = next((a for a in offered if a.name == action), None)
            if spec is None:
                names = ", ".join(a.name for a in offered) or "none"
                raise ActionNotAvailable(
                    f"workflow {workflow_id} is in state {row['state']} ({row['proc_state']}); action {action} "
                    f"is not available there (available: {names})"
                )
            if not spec.allows(role):
                refusal = AccessDenied(f"role {role} may not run {action} on a {row['wf_type']} workflow")
                append_audit(conn, actor=actor, role=role, event="workflow.action", outcome="refused",
                             target=f"workflow:{workflow_id}", details={"action": action, "state": row["state"]})
                outcome = Outcome()
            else:
                outcome = self.stepper.run_action(conn, run, definition, row, spec, inputs=inputs or {},
                                                  actor=actor, role=role, stored_context=data)
        if refusal is not None:
            raise refusal
        self._after(run, outcome)

    def retry(self, workflow_id: int, *, actor: str, role: str, note: str | None = None) -> WorkflowView:
        """Operator: run a workflow in ``exception`` (or waiting to retry) again now."""
        self._require_operator(actor, role, "workflow.retry", workflow_id)
        run = Run(actor, role)
        with self._transaction() as conn:
            row = store.lock_workflow(conn, workflow_id)
            if row["proc_state"] not in ("exception", "retry"):
                raise WorkflowError(
                    f"workflow {workflow_id} is {row['proc_state']}; only one in exception or retry can be retried"
                )
            outcome = self.stepper.operator_retry(conn, run, row, actor=actor, role=role, note=note)
        self._after(run, outcome)
        return self.get(workflow_id)

    def fail(self, workflow_id: int, *, actor: str, role: str, reason: str) -> WorkflowView:
        """Operator: end a workflow as failed, with a reason; its parent is woken."""
        self._require_operator(actor, role, "workflow.fail", workflow_id)
        if not reason.strip():
            raise WorkflowError("give a reason: it is shown to the requester and kept in the history")
        run = Run(actor, role)
        with self._transaction() as conn:
            row = store.lock_workflow(conn, workflow_id)
            if row["proc_state"] in store.FINAL_PROC_STATES:
                raise WorkflowError(f"workflow {workflow_id} is already {row['proc_state']}")
            outcome = self.stepper.operator_fail(conn, run, row, actor=actor, role=role, reason=reason)
        self._after(run, outcome)
        return self.get(workflow_id)

    # --- worker side ---------------------------------------------------------------

    def resume_due(self, *, limit: int | None = None, actor: str = WORKER_ACTOR,
                   should_stop: Callable[[], bool] = lambda: False) -> int:
        """Claim due workflows (woken, retry time reached, lease expired) and run them.

        Returns how many were claimed.  Safe to call from many processes on
        many machines at once: a claim is a conditional row update.
        """
        run = Run(actor, SYSTEM_ROLE, should_stop=should_stop)
        now = self.clock()
        lease_until = now + timedelta(seconds=self.config.lease_seconds)
        with self._transaction() as conn:
            candidates = store.due_workflows(conn, now, limit or self.config.batch_size)
            claimed: list[int] = []
            for c in candidates:
                if store.claim(conn, int(c["id"]), claimant=run.claimant, now=now, lease_until=lease_until):
                    claimed.append(int(c["id"]))
                    run.expect(int(c["id"]), c["wf_type"], c["state"])
        run.enqueue(*claimed)
        self.drain(run)
        return len(claimed)

    # --- internals -------------------------------------------------------------

    def _transaction(self) -> Any:
        return self.db.begin()

    def _after(self, run: Run, outcome: Outcome) -> None:
        run.enqueue(*outcome.runnable)
        if outcome.error is not None:
            # The caller's action failed (and was recorded); what it had set
            # in motion before is nothing, so there is nothing to drain.
            raise outcome.error
        self.drain(run)

    def drain(self, run: Run) -> None:
        """Step every claimed workflow of ``run`` until each one waits or ends."""
        while run.queue:
            if run.should_stop():
                self._release(run)
                return
            wf_id = run.queue.popleft()
            try:
                rehearsal = self._rehearse(run, wf_id)
                with self._transaction() as conn:
                    outcome = self.stepper.step(conn, run, wf_id, rehearsal)
            except Exception as exc:  # noqa: BLE001 - one broken workflow must not stop the others
                log.warning("workflow %s: step failed, left for the worker: %s", wf_id, exc,
                            exc_info=not isinstance(exc, OpenXPKIError))
                self._release_quietly(run, wf_id)
                continue
            if outcome is not None:
                run.enqueue(*outcome.runnable)

    def _rehearse(self, run: Run, wf_id: int) -> Rehearsal | None:
        """On SQLite, run a reads-only automatic action before its step takes the write lock.

        SQLite's write transaction excludes every other writer of the
        database (all requests, all processes, the worker): a directory
        lookup inside it made them all wait for the directory, for as long as
        its timeout when it hung.  Databases that lock rows need no
        rehearsal: there the step holds only its own workflow's row.
        """
        expected = run.expected.get(wf_id)
        if expected is None or store.locks_rows(self.db):
            return None
        definition = self.definitions.definitions.get(expected[0])
        if definition is None or not self.stepper.rehearsable(definition, expected[1]):
            return None
        with read_only(self.db) as conn:
            return self.stepper.rehearse(conn, run, wf_id)

    def _release(self, run: Run) -> None:
        """Hand claimed-but-unstarted workflows back at once (worker stopping)."""
        ids = list(run.queue)
        run.queue.clear()
        if not ids:
            return
        with self._transaction() as conn:
            store.release_claims(conn, ids, claimant=run.claimant, now=self.clock())

    def _release_quietly(self, run: Run, wf_id: int) -> None:
        # If even this fails the lease still runs out; the worker takes it then.
        try:
            with self._transaction() as conn:
                store.release_claims(conn, [wf_id], claimant=run.claimant, now=self.clock())
        except SQLAlchemyError:
            log.warning("workflow %s: could not release the claim; it is reclaimed when the lease ends", wf_id)

    def _require_operator(self, actor: str, role: str, event: str, workflow_id: int) -> None:
        # System: the application itself (e.g. a card made unusable ends its personalizations), never a person.
        if role not in self.config.operator_roles and role != roles.SYSTEM:
            self._refuse(actor, role, event, workflow_id, f"role {role} may not {event.split('.')[-1]} workflows",
                         {})

    def _refuse(self, actor: str, role: str, event: str, workflow_id: int | None, message: str,
                details: Mapping[str, Any]) -> None:
        try:
            with self._transaction() as conn:
                append_audit(conn, actor=actor, role=role, event=event, outcome="refused",
                             target=f"workflow:{workflow_id}" if workflow_id else None, details=details)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot record the refusal in the audit log: {exc}") from exc
        raise AccessDenied(message)
