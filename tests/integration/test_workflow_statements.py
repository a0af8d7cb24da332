"""What a workflow step asks of the database (issue #15), each test on SQLite and on PostgreSQL.

Statement counts do not depend on load, so these tests pin the reads and
writes that were removed: a regression shows as a count, not as a timing.
Each test also checks that the result (context, state, children) is right.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from data.workflow.activities_for_tests import REGISTRY, FakeClock, TestServices, load_test_definitions
from sqlalchemy import event
from sqlalchemy.engine import Engine

from openxpki_py.domains import load_definitions
from openxpki_py.errors import PolicyViolation
from openxpki_py.workflow import ActivityContext, Registry, WorkflowEngine, WorkflowState, WorkflowView, store
from openxpki_py.workflow.context import WorkflowContext
from openxpki_py.workflow.run import Run

RA = "RA Operator"


@pytest.fixture
def engine(db_engine: Engine) -> WorkflowEngine:
    return WorkflowEngine(db_engine, load_test_definitions(), TestServices(), clock=FakeClock())


@contextmanager
def statements(db: Engine) -> Iterator[list[str]]:
    """Every statement ``db`` sends meanwhile, whitespace folded."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(db, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db, "before_cursor_execute", record)


def count(seen: list[str], prefix: str, contains: str = "") -> int:
    return sum(1 for s in seen if s.upper().startswith(prefix) and contains in s)


def test_a_parent_reads_its_children_once_per_step(engine: WorkflowEngine, db_engine: Engine) -> None:
    """The wait check, the activity and the condition of the parent's step share one read of the children."""
    parent = engine.start("test_parent", actor="alice", role="User", context={"children": ["approval", "approval"]})
    first, second = (c.id for c in engine.children(parent.id))
    engine.act(first, "approve", actor="olga", role=RA)
    with statements(db_engine) as seen:
        engine.act(second, "approve", actor="olga", role=RA)  # the last child ends: the parent collects
    # Once the row list (the wait check, handed to collect_children and children_succeeded) and once
    # both children's contexts (one query, not one per child).
    assert count(seen, "SELECT", "workflow.last_error FROM workflow WHERE workflow.parent_id") == 1
    assert count(seen, "SELECT", "workflow_context.workflow_id IN") == 1
    done = engine.get(parent.id)
    assert (done.state, done.proc_state) == ("SUCCESS", "finished")
    assert done.context["results"] == {str(first): "DONE", str(second): "DONE"}


def test_a_parent_that_just_forked_waits_without_reading_its_children(engine: WorkflowEngine,
                                                                      db_engine: Engine) -> None:
    with statements(db_engine) as seen:
        parent = engine.start("test_parent", actor="alice", role="User", context={"children": ["approval"]})
    assert count(seen, "SELECT", "workflow.last_error FROM workflow WHERE workflow.parent_id") == 0
    assert (parent.state, parent.proc_state) == ("WAIT", "waiting")


def test_children_read_again_after_a_fork(db_engine: Engine) -> None:
    """A fork in the same action is seen by the next ``children()``: the read-once list is dropped."""
    now = datetime.now(timezone.utc)

    def new_workflow(conn: Any, parent_id: int | None) -> int:
        return store.insert_workflow(conn, wf_type="test_child", state="CHECK", proc_state="manual",
                                     creator="alice", creator_role="User", parent_id=parent_id,
                                     created_at=now, updated_at=now)

    with db_engine.begin() as conn:
        parent_id = new_workflow(conn, None)
        ctx = ActivityContext(
            conn=conn, workflow_id=parent_id, wf_type="test_parent", state="WAIT", action="collect", actor="alice",
            role="User", creator="alice", creator_role="User", services=None, context=WorkflowContext({}),
            parent_id=None, now=now, forker=lambda c, _type, _context: (new_workflow(c.conn, c.workflow_id), False),
        )
        assert ctx.children() == []
        child = ctx.fork("test_child")
        assert [c.id for c in ctx.children()] == [child]
        assert ctx.children()[0].context == {}


def test_an_action_without_activity_takes_no_savepoint(engine: WorkflowEngine, db_engine: Engine) -> None:
    """Nothing but an activity writes inside the action, so ``reject`` (none) runs without a savepoint."""
    wf = engine.start("test_approval", actor="alice", role="User", context={"subject": "alice", "mode": "approval"})
    with statements(db_engine) as seen:
        engine.act(wf.id, "reject", actor="olga", role=RA, inputs={"reason": "no"})
    assert count(seen, "SAVEPOINT") == 0
    rejected = engine.get(wf.id)
    assert (rejected.state, rejected.proc_state) == ("REJECTED", "failed")
    assert rejected.context["reason"] == "no"
    # An action with an activity still runs it in a savepoint: a failure there keeps none of its writes.
    other = engine.start("test_approval", actor="alice", role="User", context={"subject": "alice", "mode": "approval"})
    with statements(db_engine) as seen:
        engine.act(other.id, "approve", actor="olga", role=RA)
    assert count(seen, "SAVEPOINT") == 2  # approve, then issue


def test_changed_context_keys_are_updated_in_place(engine: WorkflowEngine, db_engine: Engine) -> None:
    """A key the workflow already has is updated (one statement), not deleted and inserted again."""
    wf = engine.start("test_approval", actor="alice", role="User",
                      context={"subject": "alice", "mode": "approval", "approvals_required": 2})
    engine.act(wf.id, "approve", actor="olga", role=RA, inputs={"comment": "first"})  # approvals: new key
    with statements(db_engine) as seen:
        engine.act(wf.id, "approve", actor="otto", role=RA, inputs={"comment": "second"})
    assert count(seen, "DELETE", "workflow_context") == 0
    assert count(seen, "UPDATE", "workflow_context") == 1  # approve: approvals and comment, in one executemany
    assert count(seen, "INSERT", "workflow_context") == 1  # issue: issued (a new key)
    done = engine.get(wf.id)
    assert done.state == "DONE"
    assert done.context["approvals"] == ["olga", "otto"]
    assert done.context["comment"] == "second"
    assert done.context["issued"] is True


def test_a_deleted_context_key_is_gone(engine: WorkflowEngine, db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        wf_id = engine.stepper.create(conn, Run("alice", "User"), engine.definitions.get("test_approval"),
                                      {"subject": "alice", "mode": "approval"}, actor="alice", role="User",
                                      parent_id=None)[0]
        store.save_context(conn, wf_id, {"mode": "auto", "extra": 1}, {"subject"}, stored={"subject", "mode"})
    with db_engine.connect() as conn:
        assert store.load_context(conn, wf_id) == {"mode": "auto", "extra": 1}


def test_launch_and_current_read_less(engine: WorkflowEngine, db_engine: Engine) -> None:
    """``launch`` returns the id without reading the workflow back; ``current`` has no history."""
    with statements(db_engine) as seen:
        wf_id = engine.launch("test_approval", actor="alice", role="User",
                              context={"subject": "alice", "mode": "approval"})
    assert count(seen, "SELECT", "FROM workflow_history") == 0
    with statements(db_engine) as seen:
        state = engine.current(wf_id)
    assert count(seen, "SELECT") == 2  # the row and the context
    assert isinstance(state, WorkflowState) and not isinstance(state, WorkflowView)
    full = engine.get(wf_id)
    assert (state.state, state.proc_state, state.version, dict(state.context)) == (
        full.state, full.proc_state, full.version, dict(full.context))
    assert [a.name for a in state.available_actions(RA)] == [a.name for a in full.available_actions(RA)]
    assert "history" not in state.as_json() and full.as_json()["history"]



def test_an_added_search_value_is_written_without_reading_the_others(engine: WorkflowEngine,
                                                                      db_engine: Engine) -> None:
    with statements(db_engine) as seen:  # check adds tag=checked, issue adds serial=s<id>
        wf_id = engine.launch("test_approval", actor="alice", role="User", context={"subject": "alice", "mode": "auto"})
    assert count(seen, "SELECT", "FROM workflow_attribute") == 0
    assert count(seen, "DELETE", "workflow_attribute") == 1  # set_attribute("subject") replaces its values
    assert engine.get(wf_id).attributes == {"serial": (f"s{wf_id}",), "subject": ("alice",), "tag": ("checked",)}


def test_added_search_values_join_the_ones_a_workflow_has(db_engine: Engine) -> None:
    now = datetime.now(timezone.utc)
    with db_engine.begin() as conn:
        wf_id = store.insert_workflow(conn, wf_type="test_child", state="CHECK", proc_state="manual", creator="alice",
                                      creator_role="User", parent_id=None, created_at=now, updated_at=now)
        store.replace_attributes(conn, wf_id, {"serial": ["a"], "owner": ["alice"]})
        ctx = ActivityContext(
            conn=conn, workflow_id=wf_id, wf_type="test_child", state="CHECK", action="check", actor="alice",
            role="User", creator="alice", creator_role="User", services=None, context=WorkflowContext({}),
            parent_id=None, now=now, forker=lambda *_: (0, False),
        )
        ctx.add_attribute("serial", "b")
        ctx.add_attribute("serial", "a")  # has it already: stays once
        ctx.add_attribute("new", "x")
        ctx.set_attribute("owner", "bob")
        ctx.add_attribute("owner", "carol")  # after a set: joins the set's values
        store.replace_attributes(conn, wf_id, ctx.attribute_changes)
        store.add_attributes(conn, wf_id, ctx.attribute_additions)
        assert store.load_attributes(conn, wf_id) == {"new": ["x"], "owner": ["bob", "carol"], "serial": ["a", "b"]}


def test_a_step_reads_its_row_and_context_in_one_statement(engine: WorkflowEngine, db_engine: Engine) -> None:
    wf = engine.start("test_approval", actor="alice", role="User", context={"subject": "alice", "mode": "approval"})
    with statements(db_engine) as seen:
        engine.act(wf.id, "approve", actor="olga", role=RA, inputs={"comment": "fine"})  # approve, then issue
    assert count(seen, "SELECT", "LEFT OUTER JOIN workflow_context") == 2  # one per step, the row locked
    assert count(seen, "SELECT", "FROM workflow_context") == 0
    done = engine.get(wf.id)
    assert done.state == "DONE"
    assert {k: done.context[k] for k in ("subject", "mode", "checked", "approvals", "comment", "issued")} == {
        "subject": "alice", "mode": "approval", "checked": True, "approvals": ["olga"], "comment": "fine",
        "issued": True}


READS_ONLY_FLOW = """\
type: test_reads_only
start:
  roles: [User]
  input: [subject]
initial_state: LOOK
fields:
  subject:
    type: text
states:
  LOOK:
    auto: look
  DONE:
    final: success
  REFUSED:
    final: failure
actions:
  look:
    activity: look_up_subject
    on_error:
      PolicyViolation: REFUSED
    next: DONE
"""


def test_an_activity_that_only_reads_runs_without_savepoint(db_engine: Engine, tmp_path: Path) -> None:
    """Registered ``reads_only``: no savepoint; a refusal is still recorded, and its context changes dropped."""
    registry = Registry(parent=REGISTRY)

    @registry.activity("look_up_subject", reads_only=True)
    def look_up_subject(ctx: ActivityContext) -> None:
        store.load_children(ctx.conn, ctx.workflow_id)  # a read, as a real one would
        ctx["looked"] = True
        if ctx["subject"] == "forbidden":
            raise PolicyViolation("not this one", code="test.subject")

    (tmp_path / "test_reads_only.yaml").write_text(READS_ONLY_FLOW)
    engine = WorkflowEngine(db_engine, load_definitions([tmp_path], registry=registry, include_shipped=False),
                            TestServices(), clock=FakeClock())
    with statements(db_engine) as seen:
        done = engine.start("test_reads_only", actor="alice", role="User", context={"subject": "alice"})
        refused = engine.start("test_reads_only", actor="alice", role="User", context={"subject": "forbidden"})
    assert count(seen, "SAVEPOINT") == 0
    assert (done.state, done.context["looked"]) == ("DONE", True)
    assert refused.state == "REFUSED" and "looked" not in refused.context
    assert refused.context["failure"]["code"] == "test.subject"
    assert [(h.action, h.outcome) for h in refused.history] == [("start", "ok"), ("look", "failed")]


def test_a_context_from_its_stored_text_finds_exactly_what_changed() -> None:
    stored = {"plain": '"x"', "nested": '{"a":[1,2],"b":"\\u00e9"}', "gone": "1", "spaced": '{"a": 1}'}
    context = WorkflowContext.from_json(stored)
    assert dict(context) == {"plain": "x", "nested": {"a": [1, 2], "b": "é"}, "gone": 1, "spaced": {"a": 1}}
    context["nested"]["a"].append(3)  # in place: still seen
    del context["gone"]
    context["new"] = True
    changed, deleted = context.changes_json()
    # "spaced" was not stored canonically (not by this code): rewritten once, same value.
    assert changed == {"nested": '{"a":[1,2,3],"b":"\\u00e9"}', "new": "true", "spaced": '{"a":1}'}
    assert deleted == {"gone"}
    assert context.changes() == ({"nested": {"a": [1, 2, 3], "b": "é"}, "new": True, "spaced": {"a": 1}}, {"gone"})


def test_context_text_is_what_the_column_type_writes(engine: WorkflowEngine, db_engine: Engine) -> None:
    """The step writes canonical text itself; reading through the column type gives the values back."""
    wf = engine.start("test_approval", actor="alice", role="User",
                      context={"subject": "alice", "mode": "approval", "payload": {"z": "1", "a": "é"}})
    engine.act(wf.id, "approve", actor="olga", role=RA, inputs={"comment": "ok"})
    with db_engine.connect() as conn:
        assert store.load_context(conn, wf.id)["payload"] == {"z": "1", "a": "é"}
        raw = store.lock_workflow_with_context(conn, wf.id)[1]
    assert raw["payload"] == store.canonical_json({"z": "1", "a": "é"}) == '{"a":"\\u00e9","z":"1"}'
    assert raw["approvals"] == '["olga"]'


def test_only_a_top_level_workflow_gives_up_a_singleton_key(engine: WorkflowEngine, db_engine: Engine) -> None:
    """Children never hold one (open_or_start makes top-level workflows only): their end deletes nothing."""
    with statements(db_engine) as seen:
        parent = engine.start("test_parent", actor="alice", role="User", context={"children": ["auto"]})
    assert parent.state == "SUCCESS" and engine.get(engine.children(parent.id)[0].id).state == "DONE"
    assert count(seen, "DELETE", "workflow_singleton") == 1  # the parent's end; not the child's
    # A top-level workflow still frees its key when it ends: the next open_or_start makes a new one.
    waiting = engine.open_or_start("test_approval", "alice", actor="alice", role="User",
                                   context={"subject": "alice", "mode": "approval"})
    assert engine.open_or_start("test_approval", "alice", actor="alice", role="User",
                                context={"subject": "alice", "mode": "approval"}).id == waiting.id
    engine.act(waiting.id, "approve", actor="olga", role=RA)
    assert engine.get(waiting.id).proc_state == "finished"
    again = engine.open_or_start("test_approval", "alice", actor="alice", role="User",
                                 context={"subject": "alice", "mode": "approval"})
    assert again.id != waiting.id
