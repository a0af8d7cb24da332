"""Writers of different processes on one SQLite file take turns (``db/engine.py``: ``_WriterLock``).

Apache runs several daemon processes and the worker is another: they all
write to the one database file.  SQLite's own busy handler sleeps and
polls (up to 100 ms a try), and the writer that has just committed takes
the lock again at once, so a process that keeps writing shut the others
out while they slept: at 20 users one daemon worked and the other waited
(docs/performance.md, "Fifth look").  These tests run real processes on a
real SQLite file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from openxpki_py.db import engine as db_engine
from openxpki_py.db.engine import open_engine, read_only

# A process that writes to the file: "loop" commits short write transactions
# back to back until its stdin closes; "hold" keeps one write transaction open.
_WRITER = """
import sys, time
from openxpki_py.db.engine import open_engine, read_only
engine = open_engine(sys.argv[1])
if sys.argv[2] == "hold":
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (0)")
        print("holding", flush=True)
        sys.stdin.read()
else:
    import threading
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("writing", flush=True)
    n = 0
    while not stop.is_set():
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            time.sleep(0.002)  # a step's work inside its transaction
        n += 1
    print(n, flush=True)
"""


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    return url


Writer = Callable[[str], "subprocess.Popen[str]"]


@pytest.fixture
def writer(database: str) -> Iterator[Writer]:
    """``writer(kind)`` starts a writer process on the database ("loop" or "hold"); stopped at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(kind: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([sys.executable, "-c", _WRITER, database, kind], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() in ("holding", "writing")
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def test_a_writer_is_not_shut_out_by_another_process_that_keeps_writing(database: str, writer: Writer) -> None:
    # Before: this process's writes waited in SQLite's busy handler while the
    # other process committed and began again between two of its polls: in
    # 3 s it got 1-3 writes in, one of them after waiting 8-23 s (or "database
    # is locked" at 30 s).  Taking turns, each process gets about half.
    looping = writer("loop")
    engine = open_engine(database)
    waits = []
    try:
        deadline = time.monotonic() + 10
        while _rows(engine) < 20:  # the other process is writing (else the test proves nothing)
            assert time.monotonic() < deadline, "the other process does not write"
            time.sleep(0.01)
        end = time.monotonic() + 3
        while time.monotonic() < end:  # as a daemon does: a transaction, some work outside it, the next
            start = time.monotonic()
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (2)")
                waits.append(time.monotonic() - start)
                time.sleep(0.002)
            time.sleep(0.002)
    finally:
        others = _stop(looping)
        engine.dispose()
    assert waits, f"no write got in (the other process printed {others!r})"
    # Taking turns, a write waits for one of the other's 2 ms transactions (about 500 writes here in 3 s,
    # the longest wait 5 ms); the bounds leave room for a busy machine.
    assert len(waits) >= 50 and max(waits) < 5, (
        f"{len(waits)} writes in 3 s, the longest wait {max(waits):.1f} s, while the other process wrote {others} times")


def _rows(engine: Engine) -> int:
    with read_only(engine) as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one())


def _stop(process: subprocess.Popen[str]) -> str:
    """End a writer's stdin; what it printed last (a looping writer: how many times it wrote)."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    return process.stdout.readline().strip()


def test_a_writer_stops_waiting_at_the_busy_timeout_and_gets_in_once_the_holder_dies(
        database: str, writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_engine, "SQLITE_BUSY_TIMEOUT_MS", 2000)
    holder = writer("hold")
    engine = open_engine(database)
    start = time.monotonic()
    with pytest.raises(OperationalError, match="database is locked"), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (3)")
    # One busy timeout (2 s), not the writer lock's and then SQLite's own again (4 s).
    assert time.monotonic() - start < 3.5
    os.kill(holder.pid, signal.SIGKILL)  # the kernel drops a dead process's locks
    holder.wait(10)
    # The helper that waited for the abandoned try got the lock after the holder died and let it go again;
    # the busy timeout is back to its value for the next transaction.
    with engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2000
        conn.exec_driver_sql("INSERT INTO t VALUES (4)")
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1  # the holder's row died with it
    engine.dispose()


def test_a_lock_taken_while_an_abandoned_wait_is_pending_is_not_let_go_of(tmp_path: Path) -> None:
    # Found by review: a caller gave up while the helper still waited for it in the kernel; the next caller
    # took the lock through the same open file, and the helper, getting it for the abandoned wait, let go of
    # it: the next caller's transaction ran without the lock.
    path = tmp_path / "store.db"
    path.touch()
    lock = db_engine._WriterLock(str(path))
    other = os.open(f"{path}-writer.lock", os.O_RDONLY | os.O_CREAT)  # another process's open file, in effect
    checker = os.open(f"{path}-writer.lock", os.O_RDONLY)
    try:
        for _ in range(30):
            fcntl.flock(other, fcntl.LOCK_EX)
            assert not lock.acquire(0.05)  # gives up; its helper goes on waiting
            fcntl.flock(other, fcntl.LOCK_UN)
            assert lock.acquire(5)
            time.sleep(0.01)  # the helper has got the lock for the abandoned wait by now
            with pytest.raises(BlockingIOError):  # still held: the caller's, not let go of
                fcntl.flock(checker, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.release()
    finally:
        os.close(other)
        os.close(checker)


@pytest.mark.parametrize(("database_mode", "lock_mode"), [(0o644, 0o600), (0o640, 0o600), (0o664, 0o660)])
def test_the_lock_file_is_open_only_to_those_who_may_write_the_database(
        tmp_path: Path, database_mode: int, lock_mode: int) -> None:
    # A reader (others, or a backup group) could otherwise take the lock through a read-only file and hold
    # every writer off.
    path = tmp_path / "store.db"
    path.touch()
    path.chmod(database_mode)
    engine = open_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    assert Path(f"{path}-writer.lock").stat().st_mode & 0o777 == lock_mode
    engine.dispose()


def test_an_unusable_lock_file_is_reported_and_writes_go_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store.db"
    Path(f"{path}-writer.lock").symlink_to(tmp_path / "missing" / "folder")
    engine = open_engine(f"sqlite:///{path}")
    with caplog.at_level(logging.WARNING, logger="openxpki_py.db.engine"):
        for value in range(3):
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                conn.exec_driver_sql(f"INSERT INTO t VALUES ({value})")
    warnings = [r.getMessage() for r in caplog.records if "writer lock" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not per transaction
    assert "busy handler" in warnings[0]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 3
    engine.dispose()


def test_a_forked_child_takes_its_own_lock(database: str) -> None:
    # flock belongs to the open file: a child that kept its parent's would
    # share the parent's lock instead of waiting for it; and a thread lock
    # the parent held at the fork would stay held in the child for ever.
    engine = open_engine(database)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    with engine.begin() as conn:  # the parent holds both locks while it forks
        conn.exec_driver_sql("INSERT INTO t VALUES (5)")
        lock = conn.connection.dbapi_connection.writer_lock  # type: ignore[union-attr]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(to_child_w)
                os.close(to_parent_r)
                while_held = lock.acquire(0.5)
                os.write(to_parent_w, b"1" if while_held else b"0")
                os.read(to_child_r, 1)  # the parent has committed
                after = lock.acquire(5)
                os.write(to_parent_w, b"1" if after else b"0")
            finally:
                os._exit(0)
        os.close(to_child_r)
        os.close(to_parent_w)
        while_held = _read_byte(to_parent_r)
    os.write(to_child_w, b"!")
    after = _read_byte(to_parent_r)
    os.waitpid(pid, 0)
    os.close(to_child_w)
    os.close(to_parent_r)
    engine.dispose()
    assert while_held == b"0", "the child took the write lock while its parent held it"
    assert after == b"1", "the child could not take the write lock once its parent let go"


def _read_byte(fd: int, timeout: float = 20) -> bytes:
    """One byte from the child, b"" if it ended without one (never a hang)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "the child did not answer"
    return os.read(fd, 1)


def test_an_engine_gone_closes_its_lock_file(writer: Writer, database: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests and tools open many engines; each must not keep a descriptor (and a helper thread) for ever.
    import gc

    monkeypatch.setattr(db_engine, "SQLITE_BUSY_TIMEOUT_MS", 200)
    holder = writer("hold")

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    def contended_write() -> None:  # one that needs the helper thread, then gives up
        engine = open_engine(database)
        with pytest.raises(OperationalError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (7)")
        engine.dispose()

    gc.collect()
    before = open_files()
    threads = threading.active_count()
    for _ in range(10):
        contended_write()
    _stop(holder)
    holder.wait(10)
    # The helpers get the lock when the holder ends, let go of it, and close their files.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (open_files() - before >= 3 or threading.active_count() - threads >= 3):
        gc.collect()
        time.sleep(0.05)
    assert open_files() - before < 3
    assert threading.active_count() - threads < 3
