"""The operator CLI: readable output, --json for scripts, operator actions."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from data.workflow.activities_for_tests import TestServices, load_test_definitions
from sqlalchemy.engine import Engine

from openxpki_py.errors import WorkflowError
from openxpki_py.workflow import WorkflowEngine
from openxpki_py.workflow import cli as workflow_cli
from openxpki_py.workflow.errors import AccessDenied


@pytest.fixture
def engine(sqlite_engine: Engine) -> WorkflowEngine:
    return WorkflowEngine(sqlite_engine, load_test_definitions(), TestServices())


def run(engine: WorkflowEngine, *argv: str) -> str:
    parser = argparse.ArgumentParser(prog="openxpki-py")
    parser.add_argument("--actor", default="cli")  # as the main CLI has it
    workflow_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    assert args.workflow_handler(args, engine, out) == 0
    return out.getvalue()


def test_start_show_execute(engine: WorkflowEngine) -> None:
    started = json.loads(run(engine, "--actor", "alice", "workflow", "start", "test_approval", "--role", "User",
                             "--set", "subject=alice", "--set", "mode=approval", "--set-json",
                             'payload={"ou": "IT"}', "--json"))
    wf_id = started["id"]
    assert (started["state"], started["context"]["payload"]) == ("PENDING", {"ou": "IT"})
    assert started["available_actions"] == []  # not for a User
    text = run(engine, "workflow", "show", str(wf_id), "--role", "RA Operator")
    assert f"workflow {wf_id} (test_approval): state PENDING, manual" in text
    assert "check            CHECK → PENDING  alice (User)" in text
    assert "approve(comment?:text)" in text
    shown = json.loads(run(engine, "workflow", "show", str(wf_id), "--json", "--role", "RA Operator"))
    assert [a["name"] for a in shown["available_actions"]] == ["approve", "reject", "break_it"]
    done = run(engine, "--actor", "olga", "workflow", "execute", str(wf_id), "approve", "--role", "RA Operator",
               "--version", str(shown["version"]), "--set", "comment=fine")
    assert "state DONE, finished" in done and "fine" in done
    listed = run(engine, "workflow", "list", "--attr", "subject=alice")
    assert f"{wf_id:>7}  test_approval" in listed
    assert json.loads(run(engine, "workflow", "list", "--type", "nope", "--json")) == []


def test_retry_and_fail(engine: WorkflowEngine) -> None:
    services: TestServices = engine.services
    services.offline = True
    wf = engine.start("test_approval", actor="alice", role="User", context={"subject": "a", "mode": "auto"})
    text = run(engine, "workflow", "show", str(wf.id))
    assert "last error: token.not_found" in text and "next attempt:" in text
    services.offline = False
    assert "state DONE, finished" in run(engine, "workflow", "retry", str(wf.id), "--note", "token back")
    other = engine.start("test_approval", actor="alice", role="User", context={"subject": "b", "mode": "approval"})
    failed = json.loads(run(engine, "workflow", "fail", str(other.id), "--reason", "duplicate", "--json"))
    assert (failed["state"], failed["proc_state"]) == ("FAILED", "failed")
    with pytest.raises(AccessDenied):
        run(engine, "workflow", "retry", str(wf.id), "--role", "User")


def test_bad_set_syntax(engine: WorkflowEngine) -> None:
    with pytest.raises(WorkflowError, match="expected FIELD=VALUE"):
        run(engine, "workflow", "start", "test_approval", "--set", "subject")


def test_worker_once(engine: WorkflowEngine) -> None:
    assert run(engine, "worker", "--once") == "resumed 0 workflow(s)\n"
