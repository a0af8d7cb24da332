"""An automatic action whose activity only reads is rehearsed before its step's write transaction (SQLite).

SQLite's write transaction excludes every other writer, so the engine runs
such an activity first on a read snapshot and records what it found under
the step's lock, if the workflow is still where the rehearsal saw it.  On
PostgreSQL the step locks only its own row, and nothing is rehearsed.
The hung directory this is for: test_certificates_workflows.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from data.workflow.activities_for_tests import REGISTRY, FakeClock, TestServices
from sqlalchemy import update
from sqlalchemy.engine import Engine
from test_workflow_statements import READS_ONLY_FLOW

from openxpki_py.db.engine import READ_ONLY_OPTION
from openxpki_py.db.schema import workflow
from openxpki_py.domains import load_definitions
from openxpki_py.errors import PolicyViolation
from openxpki_py.workflow import ActivityContext, Registry, WorkflowEngine


def _flow() -> str:
    """test_workflow_statements' reads-only flow, with a condition after its activity."""
    flow = READS_ONLY_FLOW
    for old, new in (("type: test_reads_only", "type: test_rehearsed"),
                     ("activity: look_up_subject", "activity: look_up"),
                     ("    next: DONE\n",
                      "    next:\n      - if: looked_twice\n        to: REFUSED\n      - to: DONE\n")):
        assert old in flow
        flow = flow.replace(old, new)
    return flow


FLOW = _flow()


class Looks:
    """What the activity saw on each call: was its connection the read-only snapshot?"""

    def __init__(self) -> None:
        self.snapshot: list[bool] = []
        self.on_first_call = lambda ctx: None

    def engine(self, db: Engine, folder: Path) -> WorkflowEngine:
        registry = Registry(parent=REGISTRY)

        @registry.activity("look_up", reads_only=True)
        def look_up(ctx: ActivityContext) -> None:
            self.snapshot.append(bool(ctx.conn.get_execution_options().get(READ_ONLY_OPTION)))
            if len(self.snapshot) == 1:
                self.on_first_call(ctx)
            ctx["calls"] = len(self.snapshot)
            if ctx["subject"] == "forbidden":
                raise PolicyViolation("not this one", code="test.subject")

        @registry.condition("looked_twice")
        def looked_twice(ctx: ActivityContext) -> bool:
            # Conditions decide under the step's lock, whatever the rehearsal read.
            assert not ctx.conn.get_execution_options().get(READ_ONLY_OPTION)
            return False

        (folder / "test_rehearsed.yaml").write_text(FLOW)
        return WorkflowEngine(db, load_definitions([folder], registry=registry, include_shipped=False),
                              TestServices(), clock=FakeClock())


def test_a_reads_only_step_runs_before_the_write_transaction_on_sqlite(db_engine: Engine, tmp_path: Path) -> None:
    looks = Looks()
    done = looks.engine(db_engine, tmp_path).start("test_rehearsed", actor="alice", role="User",
                                                   context={"subject": "alice"})
    assert (done.state, done.context["calls"]) == ("DONE", 1)
    assert looks.snapshot == [db_engine.dialect.name == "sqlite"]  # once, and on SQLite outside the write lock
    assert [(h.action, h.outcome) for h in done.history] == [("start", "ok"), ("look", "ok")]


def test_a_refusal_found_by_the_rehearsal_is_recorded_without_a_second_run(db_engine: Engine,
                                                                           tmp_path: Path) -> None:
    looks = Looks()
    refused = looks.engine(db_engine, tmp_path).start("test_rehearsed", actor="alice", role="User",
                                                      context={"subject": "forbidden"})
    assert len(looks.snapshot) == 1  # a directory that timed out is not asked again under the lock
    assert refused.state == "REFUSED" and "calls" not in refused.context
    assert refused.context["failure"]["code"] == "test.subject"
    assert [(h.action, h.outcome) for h in refused.history] == [("start", "ok"), ("look", "failed")]


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_rehearsal_is_dropped_when_the_workflow_moved_meanwhile(db_engine: Engine, tmp_path: Path) -> None:
    looks = Looks()

    def moved(ctx: ActivityContext) -> None:
        # Someone else writes the row between the rehearsal and the step (its version moves on).
        with db_engine.begin() as conn:
            conn.execute(update(workflow).where(workflow.c.id == ctx.workflow_id)
                         .values(version=workflow.c.version + 1))

    looks.on_first_call = moved
    done = looks.engine(db_engine, tmp_path).start("test_rehearsed", actor="alice", role="User",
                                                   context={"subject": "alice"})
    assert looks.snapshot == [True, False]  # rehearsed, then run again under the lock
    assert (done.state, done.context["calls"]) == ("DONE", 2)  # what the second run found
