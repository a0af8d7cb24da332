"""Engine semantics, each test on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from datetime import timedelta

import pytest
from data.workflow.activities_for_tests import FakeClock, TestServices, load_test_definitions
from sqlalchemy import select
from sqlalchemy.engine import Engine

from openxpki_py.audit import verify_chain
from openxpki_py.audit.pending import chain_pending
from openxpki_py.db.schema import audit_log, workflow_context, workflow_history
from openxpki_py.errors import FieldProblem, WorkflowError
from openxpki_py.workflow import WorkflowEngine, WorkflowView
from openxpki_py.workflow.errors import (
    AccessDenied,
    ActionNotAvailable,
    ActivityFailed,
    InputInvalid,
    UnknownWorkflow,
    WorkflowConflict,
)

RA = "RA Operator"


@pytest.fixture
def services() -> TestServices:
    return TestServices()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(db_engine: Engine, services: TestServices, clock: FakeClock) -> WorkflowEngine:
    return WorkflowEngine(db_engine, load_test_definitions(), services, clock=clock)


def audit_events(db: Engine, event: str) -> list[tuple[str, str, str | None]]:
    chain_pending(db)  # as the request or worker round that ran the engine would have
    with db.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.outcome, audit_log.c.target).where(audit_log.c.event == event)
        )
        return [(r[0], r[1], r[2]) for r in rows]


def request(engine: WorkflowEngine, mode: str = "approval", **extra: object) -> WorkflowView:
    return engine.start("test_approval", actor="alice", role="User",
                        context={"subject": "alice", "mode": mode, **extra})


def test_context_round_trip(engine: WorkflowEngine) -> None:
    payload = {"cn": "Jörg Müller ✓", "empty": "", "quote": "it's \"quoted\"", "multi": "a\nb"}
    wf = request(engine, payload=payload, approvals_required=2)
    again = engine.get(wf.id)
    assert again.context["payload"] == payload
    assert again.context["approvals_required"] == 2
    assert again.context["checked"] is True
    assert again.attributes == {"subject": ("alice",), "tag": ("checked",)}
    assert [s.id for s in engine.search(subject="alice")] == [wf.id]
    assert engine.search(subject="bob") == []
    assert [s.id for s in engine.search(wf_type="test_approval", proc_state="manual", tag="checked")] == [wf.id]


def test_conditions_pick_the_path(engine: WorkflowEngine, db_engine: Engine) -> None:
    straight = request(engine, mode="auto")
    assert (straight.state, straight.proc_state) == ("DONE", "finished")
    assert [h.action for h in straight.history] == ["start", "check", "issue"]
    waiting = request(engine)
    assert (waiting.state, waiting.proc_state) == ("PENDING", "manual")
    assert [a.name for a in waiting.available_actions(RA)] == ["approve", "reject", "break_it"]
    assert waiting.available_actions("User") == []
    assert len(audit_events(db_engine, "test.issue")) == 1


def test_history_rows(engine: WorkflowEngine) -> None:
    wf = request(engine)
    done = engine.execute(wf.id, "approve", actor="olga", role=RA, inputs={"comment": "looks right"},
                          expected_version=wf.version)
    assert done.state == "DONE"
    rows = [(h.action, h.from_state, h.to_state, h.actor, h.role, h.outcome, h.note) for h in done.history]
    assert rows == [
        ("start", "(new)", "CHECK", "alice", "User", "ok", None),
        ("check", "CHECK", "PENDING", "alice", "User", "ok", None),
        ("approve", "PENDING", "ISSUE", "olga", RA, "ok", "looks right"),
        ("issue", "ISSUE", "DONE", "olga", RA, "ok", None),
    ]
    assert all(h.logged_at.tzinfo is not None for h in done.history)
    assert done.version > wf.version


def test_acl_refusals_are_audited(engine: WorkflowEngine, db_engine: Engine) -> None:
    wf = request(engine)
    with pytest.raises(AccessDenied, match="role User may not run approve"):
        engine.execute(wf.id, "approve", actor="alice", role="User")
    with pytest.raises(AccessDenied, match="may not start test_parent"):
        engine.start("test_parent", actor="olga", role=RA, context={"children": []})
    with pytest.raises(AccessDenied):
        engine.retry(wf.id, actor="alice", role="User")
    refused = [e for e in audit_events(db_engine, "workflow.action") if e[1] == "refused"]
    assert refused == [("alice", "refused", f"workflow:{wf.id}")]
    assert [e[1] for e in audit_events(db_engine, "workflow.start") if e[0] == "olga"] == ["refused"]
    assert engine.get(wf.id).version == wf.version  # nothing changed


def test_validators_and_field_types(engine: WorkflowEngine) -> None:
    with pytest.raises(InputInvalid) as info:
        engine.start("test_approval", actor="alice", role="User",
                     context={"subject": "admin", "mode": "sometimes", "approvals_required": "3", "extra": 1})
    # Each refusal is data (field, stable code, reason); the validator's code names the whole refusal.
    assert set(info.value.fields) == {
        FieldProblem("subject", "test.reserved", "'admin' is reserved"),
        FieldProblem("mode", "field.choice", "must be one of auto, approval"),
        FieldProblem("approvals_required", "field.range", "must be between 1 and 2"),
        FieldProblem("extra", "field.unknown", "no such field here"),
    }
    assert info.value.code == "test.reserved"
    assert info.value.problems["subject"] == "'admin' is reserved"  # no "[code]" left in the text
    with pytest.raises(InputInvalid, match="subject: required"):
        engine.start("test_approval", actor="alice", role="User", context={"mode": "auto"})
    with pytest.raises(InputInvalid, match="single line"):
        engine.start("test_approval", actor="alice", role="User", context={"subject": "a\nb", "mode": "auto"})
    assert engine.search() == []  # nothing half-created
    wf = request(engine, approvals_required="2")  # form posts are text
    assert wf.context["approvals_required"] == 2
    with pytest.raises(InputInvalid, match="reason: required"):
        engine.execute(wf.id, "reject", actor="olga", role=RA, inputs={})


def test_two_distinct_approvers(engine: WorkflowEngine) -> None:
    wf = request(engine, approvals_required=2)
    wf = engine.execute(wf.id, "approve", actor="olga", role=RA, expected_version=wf.version)
    assert (wf.state, wf.context["approvals"]) == ("PENDING", ["olga"])
    with pytest.raises(ActivityFailed, match="a second person must approve") as info:
        engine.execute(wf.id, "approve", actor="olga", role=RA, expected_version=wf.version)
    assert info.value.cause_code == "approval.same_person"
    wf = engine.execute(wf.id, "approve", actor="peter", role=RA, expected_version=wf.version)
    assert (wf.state, wf.context["approvals"]) == ("DONE", ["olga", "peter"])
    failed = [h for h in wf.history if h.outcome == "failed"]
    assert [(h.action, h.actor, h.from_state, h.to_state) for h in failed] == [("approve", "olga", "PENDING", "PENDING")]


def test_stale_version_and_unavailable_action(engine: WorkflowEngine) -> None:
    wf = request(engine)
    engine.execute(wf.id, "reject", actor="olga", role=RA, inputs={"reason": "no"}, expected_version=wf.version)
    with pytest.raises(WorkflowConflict, match="changed since you loaded it"):
        engine.execute(wf.id, "approve", actor="peter", role=RA, expected_version=wf.version)
    with pytest.raises(ActionNotAvailable, match=r"state REJECTED \(failed\); action approve is not available"):
        engine.execute(wf.id, "approve", actor="peter", role=RA)
    with pytest.raises(UnknownWorkflow):
        engine.get(999999)
    rejected = engine.get(wf.id)
    assert (rejected.state, rejected.proc_state, rejected.context["reason"]) == ("REJECTED", "failed", "no")


def test_failing_activity_keeps_nothing(engine: WorkflowEngine, db_engine: Engine) -> None:
    wf = request(engine)
    with pytest.raises(ActivityFailed, match="RuntimeError: internal error; the details are in the server log") as info:
        engine.execute(wf.id, "break_it", actor="olga", role=RA, expected_version=wf.version)
    assert "the activity broke" not in info.value.message  # a library's own words stay in the log
    after = engine.get(wf.id)
    assert "the activity broke" not in (after.history[-1].note or "")
    assert (after.state, after.proc_state, after.version) == ("PENDING", "manual", wf.version)
    assert "half_done" not in after.context
    assert after.history[-1].outcome == "failed"
    assert ("olga", "failed", f"workflow:{wf.id}") in audit_events(db_engine, "workflow.action")


def test_policy_error_maps_to_rejection(engine: WorkflowEngine) -> None:
    wf = engine.start("test_approval", actor="alice", role="User", context={"subject": "forbidden", "mode": "auto"})
    assert (wf.state, wf.proc_state) == ("REJECTED", "failed")
    assert wf.context["failure"] == {"action": "check", "code": "test.subject",
                                     "message": "subject 'forbidden' is not allowed"}
    assert wf.last_error == "test.subject: subject 'forbidden' is not allowed"
    assert wf.history[-1].outcome == "failed"


def test_retry_with_backoff_then_exception(engine: WorkflowEngine, services: TestServices, clock: FakeClock,
                                           db_engine: Engine) -> None:
    services.offline = True
    wf = request(engine, mode="auto")
    assert (wf.state, wf.proc_state, wf.retry_count) == ("ISSUE", "retry", 1)
    assert wf.last_error is not None and wf.last_error.startswith("token.not_found: no token")
    assert wf.wake_at == clock.now + timedelta(seconds=10)
    assert engine.resume_due() == 0  # not due yet
    clock.advance(10)
    assert engine.resume_due() == 1
    wf = engine.get(wf.id)
    assert (wf.proc_state, wf.retry_count) == ("retry", 2)
    assert wf.wake_at == clock.now + timedelta(seconds=20)
    clock.advance(20)
    assert engine.resume_due() == 1
    wf = engine.get(wf.id)
    assert (wf.state, wf.proc_state, wf.retry_count, wf.wake_at) == ("ISSUE", "exception", 3, None)
    assert wf.last_error is not None and wf.last_error.endswith("(gave up after 3 attempts)")
    clock.advance(3600)
    assert engine.resume_due() == 0  # exception waits for an operator
    services.offline = False
    wf = engine.retry(wf.id, actor="carl", role="CA Operator", note="token is back")
    assert (wf.state, wf.proc_state, wf.last_error) == ("DONE", "finished", None)
    assert len(audit_events(db_engine, "test.issue")) == 1
    assert [h.outcome for h in wf.history if h.action == "issue"] == ["failed", "failed", "failed", "ok"]
    assert ("carl", "ok", f"workflow:{wf.id}") in audit_events(db_engine, "workflow.retry")


def test_operator_fail(engine: WorkflowEngine, services: TestServices) -> None:
    services.offline = True
    wf = request(engine, mode="auto")
    with pytest.raises(WorkflowError, match="give a reason"):
        engine.fail(wf.id, actor="carl", role="CA Operator", reason=" ")
    wf = engine.fail(wf.id, actor="carl", role="CA Operator", reason="CA retired")
    assert (wf.state, wf.proc_state) == ("FAILED", "failed")
    assert wf.last_error == "failed by carl: CA retired"
    with pytest.raises(WorkflowError, match="already failed"):
        engine.fail(wf.id, actor="carl", role="CA Operator", reason="again")
    with pytest.raises(WorkflowError, match="only one in exception or retry"):
        engine.retry(wf.id, actor="carl", role="CA Operator")


def test_secrets_never_stored(engine: WorkflowEngine, db_engine: Engine) -> None:
    pin = "31415926"
    wf = engine.start("test_secret", actor="alice", role="User", context={})
    with pytest.raises(InputInvalid, match="pin: has not the expected form"):
        engine.execute(wf.id, "unlock", actor="alice", role="User", inputs={"pin": "12ab"})
    done = engine.execute(wf.id, "unlock", actor="alice", role="User", inputs={"pin": pin})
    assert done.state == "DONE" and done.context == {"unlocked": True}
    leaky = engine.start("test_secret", actor="alice", role="User", context={"leak": True})
    with pytest.raises(ActivityFailed, match="workflow.secret"):
        engine.execute(leaky.id, "unlock", actor="alice", role="User", inputs={"pin": pin})
    chain_pending(db_engine)
    with db_engine.connect() as conn:
        stored = [str(v) for (v,) in conn.execute(select(workflow_context.c.ctx_value))]
        stored += [str(n) for (n,) in conn.execute(select(workflow_history.c.note))]
        stored += [str(d) for (d,) in conn.execute(select(audit_log.c.details))]
    assert not any(pin in text for text in stored)


def children_of(engine: WorkflowEngine, parent: WorkflowView) -> dict[str, int]:
    kids = {engine.get(c.id).context["mode"] + str(i): c.id for i, c in enumerate(engine.children(parent.id))}
    assert all(engine.get(c).parent_id == parent.id for c in kids.values())
    return kids


def test_fork_happy_path_continues_in_same_request(engine: WorkflowEngine, db_engine: Engine) -> None:
    parent = engine.start("test_parent", actor="alice", role="User", context={"children": ["auto", "auto"]})
    assert (parent.state, parent.proc_state) == ("SUCCESS", "finished")
    assert sorted(parent.context["results"].values()) == ["DONE", "DONE"]
    assert len(audit_events(db_engine, "test.issue")) == 2


@pytest.mark.parametrize(("decision", "parent_state"), [("approve", "SUCCESS"), ("reject", "FAILURE")])
def test_fork_wait_for_approval(engine: WorkflowEngine, decision: str, parent_state: str) -> None:
    parent = engine.start("test_parent", actor="alice", role="User", context={"children": ["auto", "approval"]})
    assert (parent.state, parent.proc_state) == ("WAIT", "waiting")
    kids = children_of(engine, parent)
    assert engine.get(kids["auto0"]).state == "DONE"
    pending = engine.get(kids["approval1"])
    assert (pending.state, pending.proc_state) == ("PENDING", "manual")
    with pytest.raises(AccessDenied):
        engine.execute(pending.id, decision, actor="alice", role="User")
    assert engine.get(parent.id).proc_state == "waiting"
    engine.execute(pending.id, decision, actor="olga", role=RA, inputs={"comment": "checked"},
                   expected_version=pending.version)
    parent = engine.get(parent.id)
    assert (parent.state, parent.proc_state) == (parent_state, "finished" if decision == "approve" else "failed")
    assert parent.history[-1].actor == "olga"  # woken and continued in the approver's request


def test_child_offline_retried_by_worker_wakes_parent(engine: WorkflowEngine, services: TestServices,
                                                      clock: FakeClock, db_engine: Engine) -> None:
    services.offline = True
    parent = engine.start("test_parent", actor="alice", role="User", context={"children": ["auto"]})
    assert parent.proc_state == "waiting"
    (child_id,) = children_of(engine, parent).values()
    child = engine.get(child_id)
    assert (child.state, child.proc_state) == ("ISSUE", "retry")
    assert child.last_error is not None and "CA offline" in child.last_error
    clock.advance(30)
    assert engine.resume_due() == 1  # still offline: retried, backs off further
    assert engine.get(child_id).retry_count == 2
    services.offline = False
    clock.advance(60)
    assert engine.resume_due() == 1
    assert engine.get(child_id).state == "DONE"
    assert engine.get(parent.id).state == "SUCCESS"
    assert len(audit_events(db_engine, "test.issue")) == 1
    assert engine.resume_due() == 0


def test_operator_fail_of_child_wakes_parent(engine: WorkflowEngine) -> None:
    parent = engine.start("test_parent", actor="alice", role="User", context={"children": ["approval"]})
    (child_id,) = children_of(engine, parent).values()
    engine.fail(child_id, actor="olga", role=RA, reason="user left")
    parent = engine.get(parent.id)
    assert (parent.state, parent.proc_state) == ("FAILURE", "failed")


def test_audit_chain_intact(engine: WorkflowEngine, db_engine: Engine) -> None:
    wf = request(engine)
    engine.execute(wf.id, "approve", actor="olga", role=RA)
    with db_engine.connect() as conn:
        assert verify_chain(conn).ok
    assert len(audit_events(db_engine, "workflow.action")) == 3


def test_worker_reclaims_expired_lease(engine: WorkflowEngine, db_engine: Engine, clock: FakeClock) -> None:
    from openxpki_py.workflow import store
    from openxpki_py.workflow.run import Run

    wf = request(engine)
    stepper: Callable[..., object] = engine.stepper.run_action
    # A runner that claimed the workflow and died before its next step:
    dead = Run("ghost", "System")
    with db_engine.begin() as conn:
        row = store.lock_workflow(conn, wf.id)
        spec = engine.definitions.get("test_approval").actions["approve"]
        stepper(conn, dead, engine.definitions.get("test_approval"), row, spec, inputs={}, actor="olga", role=RA)
    stuck = engine.get(wf.id)
    assert (stuck.state, stuck.proc_state) == ("ISSUE", "running")
    assert engine.resume_due() == 0  # lease still valid
    clock.advance(engine.config.lease_seconds + 1)
    assert engine.resume_due() == 1
    assert engine.get(wf.id).state == "DONE"


def test_a_wait_nobody_ends_runs_its_timeout_action(engine: WorkflowEngine, clock: FakeClock) -> None:
    waiting = engine.start("test_deadline", actor="alice", role="User")
    assert (waiting.state, waiting.proc_state) == ("WAITING", "manual")
    clock.advance(59)
    assert engine.resume_due() == 0  # not yet
    clock.advance(2)
    assert engine.resume_due() == 1
    ended = engine.get(waiting.id)
    assert (ended.state, ended.proc_state) == ("GAVE_UP", "failed")
    assert [(h.action, h.actor, h.role) for h in ended.history][-1] == ("give_up", "worker", "System")
    # Acting in time: no deadline is left behind.
    acted = engine.start("test_deadline", actor="bob", role="User")
    engine.execute(acted.id, "act", actor="bob", role="User")
    clock.advance(3600)
    assert engine.resume_due() == 0
    assert engine.get(acted.id).state == "DONE"


def test_site_config_overrides_a_states_deadline(db_engine: Engine, services: TestServices, clock: FakeClock) -> None:
    from openxpki_py.workflow.config import WorkflowConfig

    engine = WorkflowEngine(db_engine, load_test_definitions(), services, clock=clock,
                            config=WorkflowConfig(state_timeouts={"test_deadline.WAITING": 600}))
    waiting = engine.start("test_deadline", actor="alice", role="User")
    clock.advance(120)
    assert engine.resume_due() == 0  # the definition's 60 s no longer apply
    clock.advance(600)
    assert engine.resume_due() == 1 and engine.get(waiting.id).state == "GAVE_UP"


def test_a_workflow_read_while_a_step_commits_is_one_moment(engine: WorkflowEngine, db_engine: Engine,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Row and context are two statements: a step committing between them gave a state with another moment's
    context (an agent's repeated receipt then failed on a half-advanced workflow, PostgreSQL)."""
    from openxpki_py.db.schema import workflow
    from openxpki_py.workflow import engine as engine_module

    wf = request(engine, payload={"moment": "before"})
    load = engine_module.store.load_context

    def load_after_a_step_commits(conn: Any, wf_id: int) -> Any:
        with db_engine.begin() as step:  # another request's step, between this read's two statements
            step.execute(workflow.update().where(workflow.c.id == wf_id).values(state="LATER"))
            step.execute(workflow_context.update().where(workflow_context.c.workflow_id == wf_id,
                                                         workflow_context.c.ctx_key == "payload")
                         .values(ctx_value={"moment": "after"}))
        return load(conn, wf_id)

    monkeypatch.setattr(engine_module.store, "load_context", load_after_a_step_commits)
    seen = engine.current(wf.id)
    moment = seen.context["payload"]["moment"]
    assert (seen.state, moment) in ((wf.state, "before"), ("LATER", "after")), (seen.state, moment)
