"""Several processes on one workflow store: one commit per action, one run per claim.

The other processes are real ones (``tests/data/workflow/wf_process.py``),
on SQLite (one file, WAL) and on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from data.workflow.activities_for_tests import TestServices, load_test_definitions
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from support.databases import url_of

from openxpki_py.audit import verify_chain
from openxpki_py.audit.pending import count_audit
from openxpki_py.db.schema import workflow, workflow_history
from openxpki_py.workflow import WorkflowEngine

SCRIPT = Path(__file__).parents[1] / "data" / "workflow" / "wf_process.py"
RA = "RA Operator"


def spawn(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


def count(db: Engine, query: object) -> int:
    with db.connect() as conn:
        return int(conn.execute(query).scalar_one())  # type: ignore[call-overload]


def issued(db: Engine) -> int:
    # Committed audit rows, chained or still queued (a process that exits without chaining, as these do).
    with db.connect() as conn:
        return count_audit(conn, event="test.issue", outcome=None)


def make_due(db: Engine, ids: list[int]) -> None:
    """Move retry times into the past, as if the backoff had elapsed."""
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    with db.begin() as conn:
        conn.execute(update(workflow).where(workflow.c.id.in_(ids)).values(wake_at=past))


def offline_requests(db: Engine, n: int) -> tuple[WorkflowEngine, list[int]]:
    engine = WorkflowEngine(db, load_test_definitions(), TestServices(offline=True))
    ids = [engine.start("test_approval", actor="alice", role="User",
                        context={"subject": f"u{i}", "mode": "auto"}).id for i in range(n)]
    assert {engine.get(i).proc_state for i in ids} == {"retry"}
    make_due(db, ids)
    return engine, ids


def test_same_manual_action_twice_at_once(db_engine: Engine, procs: list[subprocess.Popen[str]]) -> None:
    engine = WorkflowEngine(db_engine, load_test_definitions())
    wf = engine.start("test_approval", actor="alice", role="User", context={"subject": "a", "mode": "approval"})
    start_at = time.time() + 1.5
    env = {"OXP_TEST_SLOW": "0.3"}  # the approval activity takes a while: the two overlap
    procs += [spawn("execute", url_of(db_engine), wf.id, "approve", actor, wf.version, start_at, env=env)
              for actor in ("olga", "peter")]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["ok", "workflow.conflict"], [p.stderr for p in procs]
    done = engine.get(wf.id)
    assert done.state == "DONE"
    assert len(done.context["approvals"]) == 1
    assert [h.action for h in done.history].count("approve") == 1
    assert issued(db_engine) == 1


def test_two_workers_run_each_due_workflow_once(db_engine: Engine, procs: list[subprocess.Popen[str]]) -> None:
    engine, ids = offline_requests(db_engine, 8)
    start_at = time.time() + 1.5
    procs += [spawn("drain", url_of(db_engine), start_at, env={"OXP_TEST_SLOW": "0.05"}) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert {engine.get(i).state for i in ids} == {"DONE"}
    assert issued(db_engine) == len(ids)
    ok_issues = select(func.count()).select_from(workflow_history).where(
        workflow_history.c.action == "issue", workflow_history.c.outcome == "ok")
    assert count(db_engine, ok_issues) == len(ids)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def wait_state(engine: WorkflowEngine, wf_id: int, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while engine.get(wf_id).state != state:
        assert time.monotonic() < deadline, engine.get(wf_id)
        time.sleep(0.1)


def test_worker_killed_inside_activity_is_recovered(db_engine: Engine, tmp_path: Path,
                                                    procs: list[subprocess.Popen[str]]) -> None:
    engine, (wf_id,) = offline_requests(db_engine, 1)
    block, reached = tmp_path / "block", tmp_path / "reached"
    block.touch()
    env = {"OXP_TEST_BLOCK_FILE": str(block), "OXP_TEST_REACHED_FILE": str(reached)}
    first = spawn("worker", url_of(db_engine), 2, 0.1, env=env)
    procs.append(first)
    wait_for(reached, first)  # inside the issue activity, its transaction open
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    block.unlink()
    crashed = engine.get(wf_id)
    assert (crashed.state, crashed.proc_state) == ("ISSUE", "running")  # claimed by the dead worker
    assert issued(db_engine) == 0  # its issuance rolled back with the process
    second = spawn("worker", url_of(db_engine), 2, 0.1)
    procs.append(second)
    wait_state(engine, wf_id, "DONE")  # after the 2 s lease ran out
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 0
    assert issued(db_engine) == 1
    with db_engine.connect() as conn:
        assert verify_chain(conn).ok


def test_sigterm_finishes_the_current_step(db_engine: Engine, tmp_path: Path,
                                           procs: list[subprocess.Popen[str]]) -> None:
    engine, (wf_id,) = offline_requests(db_engine, 1)
    block, reached = tmp_path / "block", tmp_path / "reached"
    block.touch()
    worker = spawn("worker", url_of(db_engine), 60, 0.1,
                   env={"OXP_TEST_BLOCK_FILE": str(block), "OXP_TEST_REACHED_FILE": str(reached)})
    procs.append(worker)
    wait_for(reached, worker)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert worker.poll() is None  # still finishing the activity
    block.unlink()
    assert worker.wait(timeout=10) == 0
    assert "stopped" in worker.communicate()[1]
    done = engine.get(wf_id)
    assert (done.state, done.proc_state) == ("DONE", "finished")
    assert issued(db_engine) == 1
