"""Opening database engines (``openxpki_py.db.engine``)."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from openxpki_py.db.engine import open_engine, read_only
from openxpki_py.errors import StorageError


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A host installed without openxpki-py[postgresql]: psycopg cannot be imported.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StorageError, match=r"needs the Python driver psycopg: install openxpki-py\[postgresql\]") as info:
        open_engine("postgresql+psycopg://pki:secret@db.example.com/pki")
    assert "secret" not in str(info.value)


# --- SQLite: readers take no write lock, writers of one process queue (issue #15) ------------------


def _sqlite_engine(tmp_path: Any) -> Any:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    return engine


def _in_thread(work: Any, timeout: float = 5.0) -> bool:
    """Run ``work`` in a thread; whether it finished within ``timeout``."""
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(timeout)


def test_sqlite_reader_does_not_wait_for_a_writer(tmp_path: Any) -> None:
    # Before: every transaction was BEGIN IMMEDIATE, so a page view queued
    # behind an issuance (up to the 30 s busy timeout).
    engine = _sqlite_engine(tmp_path)
    with engine.begin() as writer:
        writer.exec_driver_sql("INSERT INTO t VALUES (1)")

        def read() -> None:
            with read_only(engine) as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0  # its own snapshot

        assert _in_thread(read), "a read-only connection waited for the writer"
    engine.dispose()


def test_sqlite_writers_queue_and_the_queue_is_given_back(tmp_path: Any) -> None:
    engine = _sqlite_engine(tmp_path)

    def write(n: int) -> None:
        for _ in range(n):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")

    threads = [threading.Thread(target=write, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # A failed transaction (rolled back) and a read-only one give the queue back too.
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        raise RuntimeError("the caller's failure")
    with read_only(engine) as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 200
    assert _in_thread(lambda: write(1)), "the writer queue was not given back"
    engine.dispose()


def test_sqlite_checkouts_send_no_ping_server_connections_do(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file cannot drop the connection; a server can (restart, failover): only server connections are pinged."""
    engine = _sqlite_engine(tmp_path)
    pings: list[Any] = []
    monkeypatch.setattr(type(engine.dialect), "do_ping", lambda self, conn: pings.append(conn) or True)
    for _ in range(3):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    assert pings == []
    # The same opener gives a PostgreSQL engine its ping (no connection needed to see the setting).
    assert open_engine("postgresql+psycopg://pki@127.0.0.1:1/none").pool._pre_ping  # type: ignore[attr-defined]
