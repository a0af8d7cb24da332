"""A lost database is 503 with Retry-After everywhere (issue 4), never a 500.

Through a real Apache (mod_wsgi daemon): a daemon started while the SQLite
file cannot be opened, and a running daemon whose PostgreSQL database stops
accepting connections; both answer pages with an HTML 503 and the token
agent's API with its JSON 503, and recover by themselves.  In-process: the
connection killed in the middle of an activity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from data.workflow.activities_for_tests import REGISTRY, TestServices, load_test_definitions
from sqlalchemy import text
from sqlalchemy.engine import Engine

from openxpki_py.db.engine import DatabaseUnavailable
from openxpki_py.web.errors import error_answer
from openxpki_py.workflow import ActivityContext, WorkflowEngine

pytestmark = pytest.mark.slow


def _unavailable_page(result: Any) -> None:
    assert result.status == 503, result.body[:1000]
    assert int(result.headers["Retry-After"]) > 0
    assert result.headers["Content-Type"].startswith("text/html")
    assert "not available right now" in result.body and "server.unavailable" in result.body


def _unavailable_api(site: Any) -> None:
    conn = site.connection()
    try:
        conn.request("POST", "/openxpki/api/v1/enroll", body=json.dumps({"code": "AAAAA-BBBBB"}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 503, body[:1000]
    assert int(resp.headers["Retry-After"]) > 0
    assert resp.headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "server.unavailable"


@pytest.mark.skipif(os.geteuid() != 0, reason="hides the SQLite folder from Apache's www-data (needs root)")
def test_daemon_started_while_sqlite_is_unreadable_answers_503_and_recovers(
        apache_site_factory: Callable[..., Any]) -> None:
    site = apache_site_factory()
    db_dir = site.db_path.parent
    db_dir.chmod(0o000)  # no request has been served: the daemon builds the app during the outage
    try:
        _unavailable_page(site.browser("alice").get("/openxpki/"))
        _unavailable_api(site)
    finally:
        db_dir.chmod(0o755)
    assert site.browser("alice").get("/openxpki/").status == 200  # the next request builds the app


def test_running_daemon_answers_503_while_postgresql_refuses_connections(
        apache_site_factory: Callable[..., Any], pg_engine: Engine) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    site = apache_site_factory(config={"database": {"url": url}})
    alice = site.browser("alice")
    assert alice.get("/openxpki/").status == 200  # the app is built, its pool holds connections
    name = pg_engine.url.database
    pg_engine.dispose()
    _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
           f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    try:
        _unavailable_page(alice.get("/openxpki/"))
        _unavailable_api(site)
    finally:
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert alice.get("/openxpki/").status == 200


def _admin(*statements: str) -> None:
    """Run ``statements`` in the server's maintenance database (the test database may refuse us)."""
    from support.databases import _admin_engine

    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        admin.dispose()


def lose_the_database(ctx: ActivityContext) -> None:
    """The database server drops this very connection in the middle of the activity."""
    ctx["half_done"] = True
    ctx.conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))


@pytest.mark.postgres
def test_connection_lost_during_an_activity_is_database_unavailable(pg_engine: Engine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    engine = WorkflowEngine(pg_engine, load_test_definitions(), TestServices())
    wf = engine.start("test_approval", actor="alice", role="User", context={"subject": "alice", "mode": "approval"})
    assert wf.state == "PENDING"
    monkeypatch.setitem(REGISTRY._entries["activity"], "explode", lose_the_database)
    with pytest.raises(DatabaseUnavailable) as info:
        engine.execute(wf.id, "break_it", actor="olga", role="RA Operator", expected_version=wf.version)
    answer = error_answer(info.value)
    assert (answer.status, answer.code, answer.headers.get("Retry-After")) == (503, "server.unavailable", "5")
    after = engine.get(wf.id)  # a new connection: nothing of the action was kept
    assert (after.state, after.version) == ("PENDING", wf.version)
    assert "half_done" not in after.context
