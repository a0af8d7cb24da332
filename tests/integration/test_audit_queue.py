"""The audit queue (issue #15): on PostgreSQL an audited transaction queues its
audit rows in ``audit_pending`` without the chain's lock; they are chained
right after the commit, exactly once, in one short transaction per batch.

Real SQLite and PostgreSQL; a software EC key signs the checkpoints (the
HSM audit key is tests/integration/test_audit_chain.py's business).
"""

from __future__ import annotations

import contextvars
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from data.workflow.activities_for_tests import load_test_definitions
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from openxpki_py.audit import append_audit, verify_chain
from openxpki_py.audit.checkpoint import write_checkpoint
from openxpki_py.audit.pending import chain_pending, chain_queued, count_audit, last_audit_time
from openxpki_py.db.schema import audit_checkpoint, audit_log, audit_pending
from openxpki_py.web.app import create_app
from openxpki_py.workflow import WorkflowEngine
from openxpki_py.workflow.worker import Worker

from test_personalization_server import Agent, start

CLI = str(Path(sys.executable).parent / "openxpki-py")


def rows_in(db: Engine, table: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def targets(db: Engine) -> list[str]:
    with db.connect() as conn:
        return [str(t) for t in conn.execute(select(audit_log.c.target).order_by(audit_log.c.id)).scalars()]


def audited(db: Engine, target: str, **kw: Any) -> None:
    """An audited transaction that commits and leaves its row unchained: a process killed right after its commit."""
    with db.begin() as conn:
        append_audit(conn, actor="alice", event="test.event", target=target, **kw)


def in_fresh_context(action: Callable[[], Any]) -> Any:
    """Run ``action`` as a new request would: its own record of what it queued."""
    return contextvars.Context().run(action)


@pytest.mark.postgres
def test_an_open_audited_transaction_does_not_hold_up_another_ones_commit(pg_engine: Engine) -> None:
    """The point of the queue: the chain's lock is no longer held until the caller commits."""
    with pg_engine.begin() as first:
        append_audit(first, actor="alice", event="test.event", target="slow")  # open, uncommitted
        finished: list[str] = []

        def second() -> None:
            with pg_engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '3s'")
                append_audit(conn, actor="bob", event="test.event", target="fast")
            finished.append(f"committed, {chain_queued()} chained")
        thread = threading.Thread(target=in_fresh_context, args=(second,))
        thread.start()
        thread.join(30)
        assert finished == ["committed, 1 chained"]  # the lock of the old code times out here
        assert targets(pg_engine) == ["fast"]
    chain_queued()  # what this context queued, once it committed
    assert targets(pg_engine) == ["fast", "slow"] and rows_in(pg_engine, audit_pending) == 0


@pytest.mark.postgres
def test_many_audited_transactions_at_once_are_each_chained_exactly_once(pg_engine: Engine) -> None:
    threads, each = 8, 25

    def appender(n: int) -> None:
        for i in range(each):
            with pg_engine.begin() as conn:
                append_audit(conn, actor=f"node{n}", event="test.event", target=f"{n}-{i}")
                append_audit(conn, actor=f"node{n}", event="test.event", target=f"{n}-{i}b")
            chain_queued()
    workers = [threading.Thread(target=in_fresh_context, args=(lambda n=n: appender(n),)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    chained = targets(pg_engine)
    assert len(chained) == len(set(chained)) == 2 * threads * each  # none lost, none twice
    assert rows_in(pg_engine, audit_pending) == 0
    for n in range(threads):  # one transaction's rows, and one node's transactions, keep their order
        mine = [t for t in chained if t.startswith(f"{n}-")]
        assert mine == [f"{n}-{i}{s}" for i in range(each) for s in ("", "b")]
    with pg_engine.connect() as conn:
        report = verify_chain(conn)
    assert report.ok and report.rows == 2 * threads * each, report.problems


def test_a_rolled_back_transaction_leaves_no_audit_row(db_engine: Engine) -> None:
    with pytest.raises(RuntimeError), db_engine.begin() as conn:
        append_audit(conn, actor="alice", event="test.event", target="rolled back")
        raise RuntimeError("the action failed")
    with db_engine.begin() as conn:
        append_audit(conn, actor="alice", event="test.event", target="kept")
        savepoint = conn.begin_nested()
        append_audit(conn, actor="alice", event="test.event", target="in a savepoint")
        savepoint.rollback()
    chain_queued()
    assert targets(db_engine) == ["kept"] and rows_in(db_engine, audit_pending) == 0


def test_decisions_from_the_trail_count_queued_rows_once(db_engine: Engine) -> None:
    """A release counted, a hold dated: from rows committed, chained or not, each counted once."""
    in_fresh_context(lambda: audited(db_engine, "workflow:7"))
    audited(db_engine, "workflow:7", outcome="refused")
    for _ in ("queued", "chained"):
        with db_engine.connect() as conn:
            assert count_audit(conn, event="test.event", target="workflow:7") == 1
            assert count_audit(conn, event="test.event", target="workflow:7", outcome=None) == 2
            assert count_audit(conn, event="test.event", target="workflow:8") == 0
            when = last_audit_time(conn, event="test.event", target="workflow:7")
            assert when is not None and when.tzinfo is not None
        chain_pending(db_engine)
    assert rows_in(db_engine, audit_pending) == 0 and len(targets(db_engine)) == 2


@pytest.mark.postgres
def test_a_row_left_queued_is_reported_by_verify_and_chained_by_the_worker(pg_engine: Engine) -> None:
    audited(pg_engine, "chained")
    chain_queued()
    old = datetime.now(timezone.utc) - timedelta(minutes=5)
    with pg_engine.begin() as conn:  # committed five minutes ago, its process killed before chaining
        conn.execute(audit_pending.insert(), {"logged_at": old.replace(microsecond=0), "actor": "alice",
                                              "role_name": None, "event": "test.event", "outcome": "ok",
                                              "target": "stranded", "details": {"n": 1}})
    in_fresh_context(lambda: audited(pg_engine, "young"))  # just committed, its process still about to chain
    with pg_engine.connect() as conn:
        report = verify_chain(conn)  # read-only: reports, chains nothing
    assert [p.code for p in report.problems] == ["queue.stale"]
    assert "2 committed audit row(s) are not chained yet" in report.problems[0].message
    assert (report.queued_rows, report.queued_oldest) == (2, old.replace(microsecond=0))
    assert report.as_json()["queued"]["rows"] == 2 and rows_in(pg_engine, audit_pending) == 2

    Worker(WorkflowEngine(pg_engine, load_test_definitions())).run_once()  # no workflow due: stragglers only
    assert targets(pg_engine) == ["chained", "stranded", "young"] and rows_in(pg_engine, audit_pending) == 0
    with pg_engine.connect() as conn:
        again = verify_chain(conn)
    assert again.ok and again.queued_rows == 0 and again.rows == 3


@pytest.mark.postgres
def test_a_young_queued_row_is_a_warning_only(pg_engine: Engine) -> None:
    in_fresh_context(lambda: audited(pg_engine, "young"))
    with pg_engine.connect() as conn:
        report = verify_chain(conn)
    assert report.ok and report.queued_rows == 1
    assert any("1 committed audit row(s) are not chained yet" in w for w in report.warnings), report.warnings


def test_a_checkpoint_signed_while_rows_are_queued_covers_them(db_engine: Engine) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    audited(db_engine, "one")
    chain_queued()
    in_fresh_context(lambda: audited(db_engine, "two"))  # committed, not chained (PostgreSQL)
    in_fresh_context(lambda: audited(db_engine, "three"))
    with db_engine.begin() as conn:
        checkpoint = write_checkpoint(conn, key, node="test")
    assert checkpoint is not None and checkpoint.row_count == 3
    assert targets(db_engine) == ["one", "two", "three"] and rows_in(db_engine, audit_pending) == 0
    with db_engine.connect() as conn:
        report = verify_chain(conn, public_key=key.public_key())
    assert report.ok and report.unanchored_rows == 0, report.problems


@pytest.mark.postgres
def test_cli_verify_chains_what_is_queued_before_it_checks(make_instance: Callable[..., Any],
                                                           pg_engine: Engine) -> None:
    inst = make_instance(pg_engine, init_ca=False)
    in_fresh_context(lambda: audited(pg_engine, "queued"))
    result = subprocess.run([CLI, "--config", str(inst.config_path), "audit", "verify"], capture_output=True,
                            text=True, timeout=120, check=False, cwd=inst.folder, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert "audit trail intact: 1 row(s)" in result.stdout
    assert targets(pg_engine) == ["queued"] and rows_in(pg_engine, audit_pending) == 0


@pytest.mark.postgres
def test_after_each_request_its_audit_rows_are_in_the_chain(make_instance: Callable[..., Any],
                                                            pg_engine: Engine) -> None:
    inst = make_instance(pg_engine)
    chain_queued()  # the CA's setup above, as its CLI command would
    app = create_app(inst.config, inst.services)
    before = rows_in(pg_engine, audit_log)
    browser, wf_id, code = start(app)  # pages: a personalization started (audited)
    assert rows_in(pg_engine, audit_pending) == 0
    after_pages = rows_in(pg_engine, audit_log)
    assert after_pages > before
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200  # the JSON API: the agent enrolled (audited)
    assert rows_in(pg_engine, audit_pending) == 0 and rows_in(pg_engine, audit_log) > after_pages
    with pg_engine.connect() as conn:
        assert verify_chain(conn).ok


def _poison(db: Engine) -> None:
    """A queued row that cannot be read (hand-made, a half-restored dump): its details are not JSON."""
    with db.begin() as conn:
        conn.exec_driver_sql("INSERT INTO audit_pending (logged_at, actor, event, outcome, details) "
                             "VALUES (now(), 'dba', 'test.event', 'ok', '{not json')")


@pytest.mark.postgres
def test_a_queued_row_that_cannot_be_read_fails_no_request_no_worker_and_no_verify(
        make_instance: Callable[..., Any], pg_engine: Engine) -> None:
    """Chaining after the work never raises into it: the action is committed either way (review finding)."""
    inst = make_instance(pg_engine)
    chain_queued()
    _poison(pg_engine)
    app = create_app(inst.config, inst.services)
    browser, wf_id, code = start(app)  # an audited page: answered, not a 500
    assert Agent(app).enroll(code).status_code == 200  # an audited API call: answered too
    assert in_fresh_context(chain_queued) == 0
    Worker(WorkflowEngine(pg_engine, load_test_definitions())).run_once()  # the worker's round goes on
    report = inst.services.audit_checkpoints.verify() if inst.services.audit_checkpoints else None
    if report is None:
        result = subprocess.run([CLI, "--config", str(inst.config_path), "audit", "verify"], capture_output=True,
                                text=True, timeout=120, check=False, cwd=inst.folder, env=os.environ.copy())
        assert "Traceback" not in result.stderr, result.stderr
        assert re.search(r"could not be chained \(audit_pending row\(s\) \d+ cannot be read", result.stderr), \
            result.stderr
    else:
        assert any(re.search(r"could not be chained \(audit_pending row\(s\) \d+ cannot be read", w)
                   for w in report.warnings), report.warnings


@pytest.mark.postgres
def test_a_checkpoint_waits_for_an_audited_transaction_still_running(pg_engine: Engine) -> None:
    """A row queued (and dated) before a checkpoint and committed after it used to follow the checkpoint in
    the chain, dated before it: verify called the honest row backdated (review finding)."""
    key = ec.generate_private_key(ec.SECP256R1())
    in_fresh_context(lambda: (audited(pg_engine, "before"), chain_queued()))
    queued = threading.Event()

    def slow_action() -> None:
        with pg_engine.begin() as conn:
            append_audit(conn, actor="alice", event="test.event", target="slow")  # dated now
            queued.set()
            threading.Event().wait(3)  # the action goes on: a lock wait, the HSM, the directory
        chain_queued()

    thread = threading.Thread(target=in_fresh_context, args=(slow_action,))
    thread.start()
    assert queued.wait(10)
    with pg_engine.begin() as conn:  # meanwhile the worker's checkpoint
        checkpoint = write_checkpoint(conn, key, node="test")
    thread.join(30)
    assert checkpoint is not None and checkpoint.row_count == 2  # it waited for "slow" and signed it
    with pg_engine.connect() as conn:
        report = verify_chain(conn, public_key=key.public_key(), clock_tolerance=timedelta(seconds=2))
    assert report.ok, [p.line() for p in report.problems]


@pytest.mark.postgres
def test_a_checkpoint_gives_up_waiting_and_says_why(pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from openxpki_py.audit import pending
    from openxpki_py.errors import StorageError

    monkeypatch.setattr(pending, "QUEUE_SETTLE_SECONDS", 1)
    key = ec.generate_private_key(ec.SECP256R1())
    with pg_engine.begin() as conn:
        append_audit(conn, actor="alice", event="test.event", target="very slow")
        with pytest.raises(StorageError, match=r"audited transactions were still running after 1 s"):
            with pg_engine.begin() as other:
                write_checkpoint(other, key, node="test")
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_checkpoint)).scalar_one() == 0


@pytest.mark.postgres
def test_a_request_does_not_wait_long_behind_a_checkpoint_holding_the_chain(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer waits for the chaining; behind a checkpoint (HSM signing) it gives up and leaves it to the worker."""
    from openxpki_py.audit import pending
    from openxpki_py.audit.chain import lock_chain

    monkeypatch.setattr(pending, "REQUEST_CHAIN_WAIT_SECONDS", 0.5)
    holding, done = threading.Event(), threading.Event()

    def checkpoint_signing() -> None:
        with pg_engine.begin() as conn:
            lock_chain(conn)
            holding.set()
            done.wait(20)

    holder = threading.Thread(target=checkpoint_signing)
    holder.start()
    try:
        assert holding.wait(10)
        chained = in_fresh_context(lambda: (audited(pg_engine, "request"), chain_queued())[1])
        assert chained == 0 and rows_in(pg_engine, audit_pending) == 1  # answered; the row waits for the worker
    finally:
        done.set()
        holder.join(30)
    assert chain_pending(pg_engine) == 1 and targets(pg_engine) == ["request"]
