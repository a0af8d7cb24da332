"""Moving one workflow by one action, inside the caller's transaction.

:class:`Stepper` holds the rules; :mod:`.engine` owns the transactions.
The activity runs inside a SAVEPOINT: when it fails, everything it did
(certificate rows, forked children, context changes) is rolled back while
the failure itself — history row, retry schedule, audit row — commits.

An automatic action whose activity only reads may be *rehearsed*: run on
a read snapshot before the step's write transaction (:meth:`Stepper.rehearse`),
so that on SQLite, where a write transaction excludes every other writer,
a directory lookup or a CSR check does not hold the database's one write
lock.  The step then takes what the rehearsal found only if the workflow is
where the rehearsal saw it (same version, same children); otherwise it runs
the action itself, as without one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..audit import append_audit
from ..db.engine import storage_error
from ..errors import OpenXPKIError
from . import store
from .config import WorkflowConfig
from .context import ActivityContext, Forker, WorkflowContext, redact
from .definition import START_ACTION, ActionSpec, DefinitionRegistry, StateSpec, WorkflowDefinition
from .errors import ActivityFailed
from .fields import check_inputs
from .run import Run

log = logging.getLogger(__name__)

NEW_STATE = "(new)"  # from_state of the start history row (Oracle stores '' as NULL)


@dataclass
class Rehearsal:
    """A reads-only automatic action run before its step's transaction, on a snapshot (engine.drain)."""

    version: int
    state: str
    children: tuple[tuple[int, str, str], ...] | None  # (id, state, proc_state) of each child it saw
    ctx: ActivityContext  # what the activity left: context changes, attributes, note
    error: Exception | None  # the activity failed: recorded by the step, not run again

    def holds_for(self, row: Mapping[Any, Any], children: Sequence[RowMapping] | None) -> bool:
        # The version moves with every write to the row or its context (store.update_workflow), and a child's
        # end does not move its parent's: the children are compared themselves.
        return (int(row["version"]) == self.version and row["state"] == self.state
                and _children_seen(children) == self.children)


@dataclass
class Outcome:
    """What to do once the transaction has committed."""

    runnable: list[int] = field(default_factory=list)  # claimed by the run: step them next
    error: Exception | None = None  # raise to the caller (the failure itself is recorded)


class Stepper:
    def __init__(self, definitions: DefinitionRegistry, services: Any, config: WorkflowConfig,
                 clock: Callable[[], datetime]) -> None:
        self.definitions = definitions
        self.registry = definitions.registry
        self.services = services
        self.config = config
        self.clock = clock

    def _lease(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.config.lease_seconds)

    def _context(self, conn: Connection, run: Run, row: Mapping[Any, Any], action: str, actor: str, role: str,
                 context: WorkflowContext, now: datetime,
                 children: Sequence[RowMapping] | None = None) -> ActivityContext:
        return ActivityContext(
            conn=conn, workflow_id=int(row["id"]), wf_type=row["wf_type"], state=row["state"], action=action,
            actor=actor, role=role, creator=row["creator"], creator_role=row["creator_role"],
            services=self.services, context=context,
            parent_id=row["parent_id"], now=now, forker=self._forker(run), children=children,
        )

    def _forker(self, run: Run) -> Forker:
        def fork(ctx: ActivityContext, wf_type: str, context: Mapping[str, Any]) -> tuple[int, bool]:
            definition = self.definitions.get(wf_type)
            return self.create(ctx.conn, run, definition, context, actor=ctx.actor, role=ctx.role,
                               parent_id=ctx.workflow_id)
        return fork

    # --- creating --------------------------------------------------------------

    def create(self, conn: Connection, run: Run, definition: WorkflowDefinition, context: Mapping[str, Any], *,
               actor: str, role: str, parent_id: int | None) -> tuple[int, bool]:
        """Insert a workflow in its initial state; return (id, has automatic work)."""
        now = self.clock()
        initial = definition.state(definition.initial_state)
        runnable = initial.kind in ("auto", "wait")
        wf_id = store.insert_workflow(
            conn, wf_type=definition.wf_type, state=initial.name, proc_state="running" if runnable else "manual",
            creator=actor, creator_role=role, parent_id=parent_id,
            claimed_by=run.claimant if runnable else None, lease_until=self._lease(now) if runnable else None,
            created_at=now, updated_at=now,
            wake_at=None if runnable else self._deadline({"wf_type": definition.wf_type}, initial, now),
        )
        row = {"id": wf_id, "wf_type": definition.wf_type, "state": initial.name, "parent_id": parent_id,
               "creator": actor, "creator_role": role}
        ctx = self._context(conn, run, row, START_ACTION, actor, role, WorkflowContext({}), now)
        checked = check_inputs(definition.start_fields, context, registry=self.registry, ctx=ctx)
        store.save_context(conn, wf_id, checked, (), stored=())
        store.add_history(conn, wf_id, action=START_ACTION, from_state=NEW_STATE, to_state=initial.name,
                          actor=actor, role=role, outcome="ok", note=None, now=now)
        append_audit(conn, actor=actor, role=role, event="workflow.start", target=f"workflow:{wf_id}",
                     details={"type": definition.wf_type, "state": initial.name, "parent_id": parent_id})
        if runnable:
            run.expect(wf_id, definition.wf_type, initial.name)
        return wf_id, runnable

    # --- automatic steps -------------------------------------------------------

    def step(self, conn: Connection, run: Run, wf_id: int, rehearsal: Rehearsal | None = None) -> Outcome | None:
        """Do the next automatic thing for a workflow this run has claimed.

        None means the claim was lost (lease expired and another runner took
        it, or an operator failed it): leave it alone.  ``rehearsal``: what
        :meth:`rehearse` found for this step, taken if it still holds.
        """
        row, data = store.lock_workflow_with_context(conn, wf_id)
        if row["proc_state"] != "running" or row["claimed_by"] != run.claimant:
            return None
        definition = self.definitions.get(row["wf_type"])
        state = definition.state(row["state"])
        now = self.clock()
        if state.kind in ("auto", "wait") and run.count_step(wf_id) > self.config.max_automatic_steps:
            return self._exception(conn, row, now, f"more than {self.config.max_automatic_steps} automatic "
                                   "steps in one run: does the definition loop?")
        children = store.load_children(conn, wf_id) if state.kind == "wait" else None
        if state.kind == "auto" or (children is not None and _all_final(children)):
            assert state.auto is not None
            action = definition.actions[state.auto]
            if rehearsal is not None and rehearsal.holds_for(row, children):
                return self._perform(conn, run, definition, row, action, rehearsal)
            # The children just read are the ones the action's conditions and activity see (one read).
            return self.run_action(conn, run, definition, row, action, inputs={},
                                   actor=run.actor, role=run.role, children=children, stored_context=data)
        if state.timeout_action is not None and row["wake_at"] is not None and row["wake_at"] <= now:
            # The state's deadline passed with nobody acting: end the wait as the definition says.
            return self.run_action(conn, run, definition, row, definition.actions[state.timeout_action],
                                   inputs={}, actor=run.actor, role=run.role, stored_context=data)
        # manual / final / waiting: just settle the row in that state (its deadline unchanged)
        values, runnable, woken = self._arrive(conn, run, row, state, now, entering=False)
        store.update_workflow(conn, wf_id, row["version"], child=row["parent_id"] is not None, updated_at=now,
                              **values)
        if runnable:
            run.expect(wf_id, row["wf_type"], row["state"])
        return Outcome(woken + ([wf_id] if runnable else []))

    def rehearsable(self, definition: WorkflowDefinition, state_name: str) -> bool:
        """Does a workflow in ``state_name`` go on with an action whose activity only reads?"""
        state = definition.states.get(state_name)
        if state is None or state.auto is None or state.kind not in ("auto", "wait"):
            return False
        activity = definition.actions[state.auto].activity
        return activity is not None and self.registry.reads_only(activity)

    def rehearse(self, conn: Connection, run: Run, wf_id: int) -> Rehearsal | None:
        """Run the workflow's next automatic action on ``conn``, a read-only snapshot, if its activity only reads.

        None when there is nothing to rehearse (another kind of step, an
        activity that writes, the claim gone) or the snapshot could not be
        read: the step then does everything itself.  The conditions are not
        evaluated here: they choose the next state under the step's lock.
        """
        try:
            row, data = store.read_workflow_with_context(conn, wf_id)
            if row["proc_state"] != "running" or row["claimed_by"] != run.claimant:
                return None
            definition = self.definitions.get(row["wf_type"])
            if not self.rehearsable(definition, row["state"]):
                return None
            state = definition.state(row["state"])
            children = store.load_children(conn, wf_id) if state.kind == "wait" else None
        except (SQLAlchemyError, OpenXPKIError):
            return None  # the step reads it again and says what is wrong
        if children is not None and not _all_final(children):
            return None
        assert state.auto is not None
        action = definition.actions[state.auto]
        activity = self.registry.get("activity", str(action.activity))
        ctx = self._context(conn, run, row, action.name, run.actor, run.role, WorkflowContext.from_json(data),
                            self.clock(), children)
        error: Exception | None = None
        try:
            activity(ctx)
        except SQLAlchemyError:
            return None  # the snapshot's connection, not the request: the step runs the action itself
        except Exception as exc:  # noqa: BLE001 - recorded by the step, as if it had run the action
            error = exc
        if ctx.forked or (children is None and ctx.read_children):
            # It forked after all (a write), or read children that the step does not compare (a child's
            # end does not move its parent's version): what it found may not hold; run it under the lock.
            return None
        return Rehearsal(int(row["version"]), row["state"], _children_seen(children), ctx, error)

    def _perform(self, conn: Connection, run: Run, definition: WorkflowDefinition, row: RowMapping,
                 action: ActionSpec, rehearsal: Rehearsal) -> Outcome:
        """:meth:`run_action` for an automatic action whose activity a rehearsal ran: record what it found."""
        now = self.clock()
        ctx = rehearsal.ctx
        ctx.conn = conn  # the conditions read under the step's lock
        if rehearsal.error is not None:
            return self._failed(conn, run, definition, row, action, run.actor, run.role, rehearsal.error,
                                ctx.secret_inputs, now)
        try:
            target = self._choose(ctx, action)
        except Exception as exc:  # noqa: BLE001 - as in run_action
            if isinstance(exc, SQLAlchemyError) and _connection_lost(conn, exc):
                raise storage_error(exc) from exc
            return self._failed(conn, run, definition, row, action, run.actor, run.role, exc, ctx.secret_inputs,
                                now)
        return self._transition(conn, run, row, ctx, action.name, target, actor=run.actor, role=run.role,
                                note=ctx.note, outcome="ok", now=now)

    def _children_final(self, conn: Connection, wf_id: int) -> bool:
        return _all_final(store.load_children(conn, wf_id))

    # --- actions ---------------------------------------------------------------

    def run_action(self, conn: Connection, run: Run, definition: WorkflowDefinition, row: RowMapping,
                   action: ActionSpec, *, inputs: Mapping[str, Any], actor: str, role: str,
                   children: Sequence[RowMapping] | None = None,
                   stored_context: Mapping[str, str] | None = None) -> Outcome:
        """``children``, ``stored_context``: the workflow's child rows and its context as stored JSON text, if
        the caller read them in this transaction (under the row's lock)."""
        now = self.clock()
        context = (WorkflowContext.from_json(stored_context) if stored_context is not None
                   else WorkflowContext(store.load_context(conn, row["id"])))
        ctx = self._context(conn, run, row, action.name, actor, role, context, now, children)
        checked: dict[str, Any] = {}
        if action.manual:
            checked = check_inputs(action.fields, inputs, registry=self.registry, ctx=ctx)
            ctx.secret_inputs = frozenset(
                str(checked[f.name]) for f in action.fields if f.secret and f.name in checked
            )
        try:
            # Only an activity writes (conditions read, the rest is in memory): without one, or with one
            # that only reads, a savepoint would have nothing to roll back, so none is taken.
            writes = action.activity is not None and not self.registry.reads_only(action.activity)
            with conn.begin_nested() if writes else nullcontext():
                for spec in action.fields:
                    if not spec.secret and spec.name in checked:
                        ctx.context[spec.name] = checked[spec.name]
                if action.activity is not None:
                    self.registry.get("activity", action.activity)(ctx)
                ctx.check_no_secrets()
                target = self._choose(ctx, action)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none kept
            if isinstance(exc, SQLAlchemyError) and _connection_lost(conn, exc):
                # Nothing can be recorded on a dead connection (it would fail
                # again, as PendingRollbackError): the whole transaction is
                # gone, so the caller is told the database is unavailable.
                raise storage_error(exc) from exc
            return self._failed(conn, run, definition, row, action, actor, role, exc, ctx.secret_inputs, now)
        return self._transition(conn, run, row, ctx, action.name, target, actor=actor, role=role,
                                note=ctx.note, outcome="ok", now=now)

    def _choose(self, ctx: ActivityContext, action: ActionSpec) -> str:
        for branch in action.next:
            if branch.condition is None:
                return branch.to
            holds = bool(self.registry.get("condition", branch.condition)(ctx))
            if holds != branch.negate:
                return branch.to
        raise AssertionError("the loader guarantees an unconditional last branch")

    def _transition(self, conn: Connection, run: Run, row: RowMapping, ctx: ActivityContext, action: str,
                    target: str, *, actor: str, role: str, note: str | None, outcome: str, now: datetime,
                    last_error: str | None = None, error_code: str | None = None) -> Outcome:
        wf_id = int(row["id"])
        changed, deleted = ctx.context.changes_json()
        store.save_context_json(conn, wf_id, changed, deleted, ctx.context.stored_keys())
        store.replace_attributes(conn, wf_id, ctx.attribute_changes)
        store.add_attributes(conn, wf_id, ctx.attribute_additions)
        store.add_history(conn, wf_id, action=action, from_state=row["state"], to_state=target, actor=actor,
                          role=role, outcome=outcome, note=note, now=now)
        state = self.definitions.get(row["wf_type"]).state(target)
        # A child forked by this action is new, so not final: a wait for children goes on without asking.
        values, runnable, woken = self._arrive(conn, run, row, state, now, entering=True,
                                               open_child=bool(ctx.forked))
        store.update_workflow(conn, wf_id, row["version"], child=row["parent_id"] is not None, state=target,
                              retry_count=0, last_error=last_error,
                              updated_at=now, **values)
        append_audit(conn, actor=actor, role=role, event="workflow.action", outcome=outcome,
                     target=f"workflow:{wf_id}",
                     details={"type": row["wf_type"], "action": action, "from": row["state"], "to": target,
                              # An on_error transition: the audit says which error took it.
                              **({"error": error_code} if error_code else {})})
        children = [child for child, child_runs in ctx.forked if child_runs]
        if runnable:
            run.expect(wf_id, row["wf_type"], target)
        return Outcome(children + woken + ([wf_id] if runnable else []))

    def _arrive(self, conn: Connection, run: Run, row: Mapping[Any, Any], state: StateSpec,
                now: datetime, *, entering: bool, open_child: bool = False) -> tuple[dict[str, Any], bool, list[int]]:
        """Row values for entering ``state``; (values, keep running, woken parents).

        A manual or waiting state with a timeout gets its deadline as
        ``wake_at`` when it is entered (``entering``); settling a reclaimed
        workflow back into it keeps the deadline it had.
        """
        released = {"claimed_by": None, "lease_until": None, "wake_at": None}
        if state.final:
            proc_state = "finished" if state.outcome == "success" else "failed"
            return {"proc_state": proc_state, **released}, False, self._wake_parent(conn, run, row, now)
        deadline = self._deadline(row, state, now) if entering else row.get("wake_at")
        if state.kind == "manual":
            return {"proc_state": "manual", **released, "wake_at": deadline}, False, []
        if state.kind == "wait" and (open_child or not self._children_final(conn, int(row["id"]))):
            return {"proc_state": "waiting", **released, "wake_at": deadline}, False, []
        claim = {"proc_state": "running", "claimed_by": run.claimant, "lease_until": self._lease(now),
                 "wake_at": None}
        return claim, True, []

    def _deadline(self, row: Mapping[Any, Any], state: StateSpec, now: datetime) -> datetime | None:
        """When a wait in ``state`` ends by itself: the site's setting, else the definition's."""
        if state.timeout_action is None:
            return None
        seconds = self.config.state_timeouts.get(f"{row['wf_type']}.{state.name}", state.timeout)
        return now + timedelta(seconds=seconds) if seconds else None

    def _wake_parent(self, conn: Connection, run: Run, row: Mapping[Any, Any], now: datetime) -> list[int]:
        """A child became final: if it was the parent's last open one, take the parent along.

        The parent row is locked first, so two children finishing at once
        serialise here and the second one sees the first as final.
        """
        parent_id = row["parent_id"]
        if parent_id is None:
            return []
        parent = store.lock_workflow(conn, int(parent_id))
        if store.open_siblings(conn, int(parent_id), int(row["id"])) > 0:
            return []
        taken = store.claim_woken_parent(conn, int(parent_id), claimant=run.claimant, now=now,
                                         lease_until=self._lease(now))
        if not taken:
            return []
        run.expect(int(parent_id), parent["wf_type"], parent["state"])
        return [int(parent_id)]

    # --- failures --------------------------------------------------------------

    def _failed(self, conn: Connection, run: Run, definition: WorkflowDefinition, row: RowMapping,
                action: ActionSpec, actor: str, role: str, exc: Exception, secrets: frozenset[str],
                now: datetime) -> Outcome:
        code = exc.code if isinstance(exc, OpenXPKIError) else type(exc).__name__
        # Only the project's own errors are worded for users; anything else
        # (a driver's SQL text, a library's internals) stays in the log.
        message = redact(exc.message if isinstance(exc, OpenXPKIError)
                         else "internal error; the details are in the server log", secrets)
        reason = f"{code}: {message}"
        # exc_info=exc, not True: a rehearsed failure is recorded outside its except block.
        log.info("workflow %s: action %s failed: %s", row["id"], action.name, reason,
                 exc_info=None if isinstance(exc, OpenXPKIError) else exc)
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        for error_name, target in action.on_error:
            if error_name in kinds:
                ctx = self._context(conn, run, row, action.name, actor, role,
                                    WorkflowContext(store.load_context(conn, row["id"])), now)
                ctx.context["failure"] = {"action": action.name, "code": code, "message": message}
                return self._transition(conn, run, row, ctx, action.name, target, actor=actor, role=role,
                                        note=reason, outcome="failed", now=now, last_error=reason,
                                        error_code=code)
        wf_id, state = int(row["id"]), row["state"]
        store.add_history(conn, wf_id, action=action.name, from_state=state, to_state=state, actor=actor,
                          role=role, outcome="failed", note=reason, now=now)
        result = Outcome()
        if action.manual:
            # The person sees the error and may try again: the state is unchanged.
            result.error = ActivityFailed(action.label, cause_code=code, cause_message=message)
            result.error.__cause__ = exc  # raised later, outside this except: keep the cause by hand
        else:
            attempt = int(row["retry_count"]) + 1
            policy = action.retry
            limits = self.config.retry.resolve(policy) if policy is not None else None
            retryable = policy is not None and (not policy.errors or bool(kinds & set(policy.errors)))
            if limits is not None and retryable and attempt < limits.max_attempts:
                wake_at = now + timedelta(seconds=limits.delay(attempt))
                store.update_workflow(conn, wf_id, row["version"], proc_state="retry", wake_at=wake_at,
                                      retry_count=attempt,
                                      last_error=f"{reason} (attempt {attempt} of {limits.max_attempts})",
                                      claimed_by=None, lease_until=None, updated_at=now)
            else:
                # Say what happened: how many attempts, or that this error is not retried.
                tries = (f" (gave up after {attempt} attempts)" if retryable
                         else f" (attempt {attempt}; this error is not retried)")
                store.update_workflow(conn, wf_id, row["version"], proc_state="exception", wake_at=None,
                                      retry_count=attempt, last_error=reason + tries, claimed_by=None,
                                      lease_until=None, updated_at=now)
        append_audit(conn, actor=actor, role=role, event="workflow.action", outcome="failed",
                     target=f"workflow:{wf_id}",
                     details={"type": row["wf_type"], "action": action.name, "state": state, "error": code})
        return result

    def _exception(self, conn: Connection, row: RowMapping, now: datetime, reason: str) -> Outcome:
        store.update_workflow(conn, int(row["id"]), row["version"], proc_state="exception", wake_at=None,
                              last_error=reason, claimed_by=None, lease_until=None, updated_at=now)
        return Outcome()

    # --- operators -------------------------------------------------------------

    def operator_retry(self, conn: Connection, run: Run, row: RowMapping, *, actor: str, role: str,
                       note: str | None) -> Outcome:
        """Run the failed automatic action again now, with fresh attempts."""
        now = self.clock()
        wf_id, state = int(row["id"]), row["state"]
        store.add_history(conn, wf_id, action="retry", from_state=state, to_state=state, actor=actor, role=role,
                          outcome="ok", note=note, now=now)
        store.update_workflow(conn, wf_id, row["version"], proc_state="running", claimed_by=run.claimant,
                              lease_until=self._lease(now), wake_at=None, retry_count=0, updated_at=now)
        append_audit(conn, actor=actor, role=role, event="workflow.retry", target=f"workflow:{wf_id}",
                     details={"type": row["wf_type"], "state": state, "last_error": row["last_error"]})
        run.expect(wf_id, row["wf_type"], state)
        return Outcome([wf_id])

    def operator_fail(self, conn: Connection, run: Run, row: RowMapping, *, actor: str, role: str,
                      reason: str) -> Outcome:
        """End the workflow as failed (in ``on_fail`` if the definition names one)."""
        now = self.clock()
        definition = self.definitions.get(row["wf_type"])
        wf_id, state = int(row["id"]), row["state"]
        target = definition.on_fail or state
        store.add_history(conn, wf_id, action="fail", from_state=state, to_state=target, actor=actor, role=role,
                          outcome="ok", note=reason, now=now)
        woken = self._wake_parent(conn, run, row, now)
        store.update_workflow(conn, wf_id, row["version"], child=row["parent_id"] is not None, state=target,
                              proc_state="failed", wake_at=None,
                              claimed_by=None, lease_until=None, last_error=f"failed by {actor}: {reason}",
                              updated_at=now)
        append_audit(conn, actor=actor, role=role, event="workflow.fail", target=f"workflow:{wf_id}",
                     details={"type": row["wf_type"], "from": state, "to": target, "reason": reason})
        return Outcome(woken)


def _children_seen(children: Sequence[RowMapping] | None) -> tuple[tuple[int, str, str], ...] | None:
    if children is None:
        return None
    return tuple((int(c["id"]), c["state"], c["proc_state"]) for c in children)


def _all_final(children: Sequence[RowMapping]) -> bool:
    return all(c["proc_state"] in store.FINAL_PROC_STATES for c in children)


def _connection_lost(conn: Connection, exc: SQLAlchemyError) -> bool:
    """The activity failed because the database connection is gone, not because of the request."""
    return conn.invalidated or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
