"""Database fixtures: a fresh SQLite file or a fresh PostgreSQL database.

- ``sqlite_engine``: a WAL SQLite file in the test's temp folder, schema created.
- ``pg_engine``: a new database ``oxp_test_<random>`` on the local server
  (``OXP_TEST_PG``, default ``postgresql+psycopg://postgres@127.0.0.1:5432``),
  schema created (copied from a session template), dropped after the test
  (in the background, while the next one runs).  Skipped only when the server
  cannot be reached; set ``OXP_REQUIRE_PG=1`` (CI) to fail instead.  The
  database has ``synchronous_commit = off``: a commit does not wait for the
  WAL to reach the disk (about 4 ms each here, thousands of commits in the
  suite).  Sessions, locks and visibility are the same; only a crash of the
  PostgreSQL server itself could lose the last commits, and no test crashes it.
- ``db_engine``: parametrised over both, for tests that must hold on each.

Each fixture yields an :class:`sqlalchemy.engine.Engine` made by
:func:`openxpki_py.db.engine.open_engine`; ``engine.url`` (with
``render_as_string(hide_password=False)``) can be handed to subprocesses.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from openxpki_py.db.engine import create_schema, open_engine

PG_SERVER_URL = os.environ.get("OXP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")


def _admin_engine() -> Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    return create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT", pool_size=1)


def url_of(engine: Engine) -> str:
    """The engine's URL, password included, for a subprocess."""
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'openxpki.db'}")
    create_schema(engine)
    try:
        yield engine
    finally:
        engine.dispose()


class _PgServer:
    """The session's side of the PostgreSQL server: a schema template and background drops.

    Each test's database is a copy of a template that already holds the
    schema (``CREATE DATABASE … TEMPLATE``: the same tables as
    :func:`create_schema` makes, without its hundred catalog changes per
    test), and is dropped by a background thread while the next test runs.
    """

    def __init__(self) -> None:
        self.admin = _admin_engine()
        self.template: str | None = None
        self.drops: queue.Queue[str | None] = queue.Queue()
        self.drop_errors: list[str] = []
        self.dropper = threading.Thread(target=self._drop_queued, name="pg-test-db-dropper", daemon=True)
        self.dropper.start()

    def new_database(self) -> str:
        """A fresh database with the schema; OperationalError if the server cannot be reached."""
        with self.admin.connect() as conn:
            if self.template is None:
                template = f"oxp_tmpl_{secrets.token_hex(6)}"
                conn.execute(text(f'CREATE DATABASE "{template}"'))
                engine = open_engine(f"{PG_SERVER_URL}/{template}")
                try:
                    create_schema(engine)
                finally:
                    engine.dispose()  # nobody may be connected to a template while it is copied
                self.template = template
            name = f"oxp_test_{secrets.token_hex(6)}"
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        return name

    def drop_later(self, name: str) -> None:
        self.drops.put(name)

    def _drop_queued(self) -> None:
        while (name := self.drops.get()) is not None:
            self._drop(name)

    def _drop(self, name: str) -> None:
        try:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except OperationalError as exc:
            self.drop_errors.append(f"{name}: {exc.orig}")

    def close(self) -> None:
        self.drops.put(None)
        self.dropper.join()
        if self.template is not None:
            self._drop(self.template)
        self.admin.dispose()
        assert not self.drop_errors, f"test databases left behind: {self.drop_errors}"


@pytest.fixture(scope="session")
def _pg_server() -> Iterator[_PgServer]:
    server = _PgServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_engine(_pg_server: _PgServer) -> Iterator[Engine]:
    try:
        name = _pg_server.new_database()
    except OperationalError as exc:
        if os.environ.get("OXP_REQUIRE_PG"):
            raise
        pytest.skip(f"PostgreSQL at {make_url(PG_SERVER_URL).render_as_string()} is unreachable: {exc.orig}")
    engine = open_engine(f"{PG_SERVER_URL}/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        _pg_server.drop_later(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine: Engine = request.getfixturevalue(name)
    return engine


@pytest.fixture(autouse=True)
def _audit_queue_of_this_test_only() -> None:
    """Each test starts as a fresh request would: no engine of an earlier test is left to chain.

    Audit rows queued on PostgreSQL are chained by whoever runs next in the
    same context (openxpki_py/audit/pending.py); in the test process that
    would otherwise be a later test, reconnecting to an engine already disposed.
    """
    from openxpki_py.audit.chain import _queued_in

    _queued_in.set(())
