"""Engines for the three supported databases, set up the same way.

SQLite (embedded default) gets WAL, foreign keys and a busy timeout so that
Apache's several processes and the worker can share one file, and a lock
its writers take in turn before SQLite's own (:class:`_WriterLock`).
PostgreSQL and Oracle (``oracle+oracledb``, thin mode) need nothing special.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
import weakref
from typing import Any

from sqlalchemy import create_engine, event, inspect, make_url
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from ..errors import StorageError
from .schema import metadata

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Drivers that come with an extra of the openxpki-py distribution.
_DRIVER_EXTRAS = {"psycopg": "postgresql", "psycopg2": "postgresql", "oracledb": "oracle"}


class _FileWait:
    """One wait for the file lock, done by the helper thread for a caller that may give up."""

    def __init__(self) -> None:
        self.settled = threading.Lock()  # held while the outcome is decided, by whichever side decides it
        self.answer: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.abandoned = False
        self.taken = False


class _LockFile:
    """One process's open lock file, and the helper thread that waits for it in the kernel (started when needed)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.broken = False
        self._waits: queue.SimpleQueue[_FileWait | None] | None = None
        # Waits handed to the helper and not yet settled.  While there are any, a caller queues behind
        # them: the helper may be about to get the lock for an abandoned wait and let go of it, and a
        # lock taken meanwhile through the same open file would be let go of with it.
        self._outstanding = 0
        self._count = threading.Lock()

    def take(self, deadline: float) -> bool:
        """Take the file lock by ``deadline``; True also when the file cannot lock (SQLite's lock decides)."""
        if self.broken:
            return True
        with self._count:
            behind_others = self._outstanding > 0
        if not behind_others:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError as exc:  # a file system without flock (some network ones)
                log.warning("SQLite writer lock %s cannot be taken (%s): writers of different processes wait in "
                            "SQLite's busy handler instead, which is slower under load", self.path, exc)
                self.broken = True
                return True
        if self._waits is None:  # only the thread at the head of the process's queue comes here
            waits: queue.SimpleQueue[_FileWait | None] = queue.SimpleQueue()
            threading.Thread(target=self._wait_for_file, args=(waits,), name="sqlite-writer-lock",
                             daemon=True).start()
            self._waits = waits
        wait = _FileWait()
        with self._count:
            self._outstanding += 1
        self._waits.put(wait)
        try:
            return wait.answer.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return self._give_up(wait)
        except BaseException:  # interrupted (Ctrl-C in the CLI): nobody would ever let go of it
            if self._give_up(wait):
                self.release()
            raise

    @staticmethod
    def _give_up(wait: _FileWait) -> bool:
        """The caller stops waiting; True if the lock came in just now (then it is the caller's)."""
        with wait.settled:
            if wait.taken:
                return True
            wait.abandoned = True
            return False

    def release(self) -> None:
        if not self.broken:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """The engine is gone: close the file (the helper does, after its last wait)."""
        if self._waits is not None:
            self._waits.put(None)
        else:
            os.close(self.fd)

    def _wait_for_file(self, waits: queue.SimpleQueue[_FileWait | None]) -> None:
        """The helper: take the file lock in the kernel for each caller in turn."""
        while (wait := waits.get()) is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                got = True
            except OSError as exc:
                log.warning("SQLite writer lock %s: waiting for it failed (%s)", self.path, exc)
                got = False
            with wait.settled:
                if wait.abandoned:
                    if got:
                        fcntl.flock(self.fd, fcntl.LOCK_UN)  # its caller has gone on without it
                else:
                    wait.taken = got
                    wait.answer.put(got)
            with self._count:
                self._outstanding -= 1
        os.close(self.fd)


class _WriterLock:
    """SQLite's one writer, taken in turn before ``BEGIN IMMEDIATE``: threads on a lock, processes on a file.

    SQLite lets one writer in; the others wait in its busy handler, which
    sleeps and polls (1, 2, 5 … up to 100 ms a try).  Under load the
    writer that had just committed took the lock again at once while the
    others slept: one Apache daemon kept it and the other daemon's threads
    all waited, so two processes served no more than one, and a process
    could be shut out for longer than the busy timeout
    (docs/performance.md, "Fifth look").

    Threads of one process queue on a ``threading.Lock``; the one at its
    head then takes ``flock`` on ``<database>-writer.lock``, as the
    writers of every other process (Apache's daemons, the worker, the CLI)
    do.  A free lock is taken in one system call.  A held one is waited
    for in the kernel, which wakes the waiters when the holder lets go (in
    no set order; whoever asks first gets it); ``flock`` has no timeout, so
    that wait runs on a helper thread and the caller stops waiting at its
    deadline (the helper then lets go of the lock as soon as it gets it).
    The kernel drops the lock of a process that dies.  SQLite's own lock
    still decides: a writer that cannot use the file (another program, a
    file system without ``flock``) waits in SQLite's busy handler as before.
    """

    RETRY_SECONDS = 60.0  # after a lock file could not be opened

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        plain_file = bool(database) and database != ":memory:" and not str(database).startswith("file:")
        # realpath: a process that reaches the database through a symlink must find the same lock.
        self.database = os.path.realpath(database) if plain_file and database else None
        self.path = f"{self.database}-writer.lock" if self.database else None
        self._file: _LockFile | None = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._retry_at = 0.0
        _writer_locks.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child (one thread): a thread lock of its own, and not the parent's open file."""
        self._threads = threading.Lock()
        if self._file is not None and self._closer is not None:
            self._closer.detach()
            with contextlib.suppress(OSError):
                os.close(self._file.fd)  # the parent's lock lives on in the parent; its helper is not here
        self._file = self._closer = None

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False if not (then SQLite's own wait decides)."""
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        try:
            file = self._open_file()
            if file is None or file.take(deadline):
                return True
        except BaseException:
            self._threads.release()
            raise
        self._threads.release()
        return False

    def release(self) -> None:
        if self._file is not None:
            self._file.release()
        self._threads.release()

    def _open_file(self) -> _LockFile | None:
        """This process's lock file; None where there is none to use."""
        if self._file is not None or self.path is None or time.monotonic() < self._retry_at:
            return self._file
        fd = self._open(self.path)
        if fd is None:
            self._retry_at = time.monotonic() + self.RETRY_SECONDS
            return None
        self._file = _LockFile(fd, self.path)
        self._closer = weakref.finalize(self, self._file.close)
        return self._file

    def _open(self, path: str) -> int | None:
        assert self.database is not None
        try:
            database = os.stat(self.database)
            # Whoever may write the database may open the lock, nobody else: a reader (a backup or
            # monitoring group) could otherwise take it through a read-only file and hold every writer off.
            mode = 0o600 | (0o060 if database.st_mode & 0o020 else 0)
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
                created = True
            except FileExistsError:
                fd = os.open(path, flags)
                created = False
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                if created:
                    os.fchmod(fd, mode)
                    # The database's owner (the CLI as root) or at least its group (another member).
                    with contextlib.suppress(OSError):
                        os.fchown(fd, database.st_uid if os.geteuid() == 0 else -1, database.st_gid)
            except OSError:
                os.close(fd)
                raise
            return fd
        except OSError as exc:
            log.warning("SQLite writer lock %s cannot be used (%s): writers of different processes wait in "
                        "SQLite's busy handler instead, which is slower under load; trying again in %.0f s",
                        path, exc.strerror or exc, self.RETRY_SECONDS)
            return None


_writer_locks: weakref.WeakSet[_WriterLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_writer_locks):
        lock.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _QueuedWriterConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions take the :class:`_WriterLock` first."""

    writer_lock: _WriterLock | None = None
    holds_queue = False

    def take_queue(self) -> None:
        lock = self.writer_lock
        if lock is not None and not self.holds_queue:
            # As long as SQLite itself would wait; past that its own busy timeout answers, as before.
            self.holds_queue = lock.acquire(SQLITE_BUSY_TIMEOUT_MS / 1000)

    def give_back_queue(self) -> None:
        if self.holds_queue:
            self.holds_queue = False
            assert self.writer_lock is not None
            self.writer_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_back_queue()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_back_queue()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give_back_queue()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling would start transactions late and
    # break "BEGIN IMMEDIATE"; let SQLAlchemy issue BEGIN itself.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


#: Execution option of a connection that only reads (see :func:`read_only`).
READ_ONLY_OPTION = "openxpki_read_only"


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN: two writers then queue on busy_timeout
    # instead of one failing late with "database is locked" on upgrade.  A
    # reader needs no lock: in WAL mode its snapshot never waits for a writer,
    # and taking the write lock made every page view queue behind issuances.
    if conn.get_execution_options().get(READ_ONLY_OPTION):
        conn.exec_driver_sql("BEGIN")
        return
    dbapi_conn = conn.connection.dbapi_connection
    queued = isinstance(dbapi_conn, _QueuedWriterConnection)
    if queued:
        dbapi_conn.take_queue()
    # The writer lock's wait took the whole busy timeout (a holder that does not let go): SQLite
    # answers "database is locked" at once instead of waiting as long again.
    waited_out = queued and dbapi_conn.writer_lock is not None and not dbapi_conn.holds_queue
    try:
        if waited_out:
            dbapi_conn.execute("PRAGMA busy_timeout=0")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if queued:
            dbapi_conn.give_back_queue()
        raise
    finally:
        if waited_out:
            dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


#: The isolation level that gives a reading transaction one snapshot for all its statements.
_SNAPSHOT_LEVEL = {"postgresql": "REPEATABLE READ", "oracle": "SERIALIZABLE"}


def read_only(engine: Engine) -> Connection:
    """A connection for reads only (``with read_only(db) as conn``), all its reads from one snapshot.

    A workflow is read in several statements (its row, its context …): under
    READ COMMITTED each statement sees what committed before it, so a step
    committing in between gave a view whose state and context disagreed (an
    agent's repeated receipt then failed on a half-advanced workflow).
    PostgreSQL's REPEATABLE READ and Oracle's SERIALIZABLE take one snapshot
    at the first read; a transaction that only reads never fails on them.
    On SQLite the transaction is a plain BEGIN: a WAL snapshot that neither
    waits for nor blocks writers.  Never write through it: on SQLite the
    write would need the lock its BEGIN did not take ("database is locked").
    """
    options: dict[str, Any] = {READ_ONLY_OPTION: True}
    level = _SNAPSHOT_LEVEL.get(engine.dialect.name)
    if level is not None:
        options["isolation_level"] = level
    return engine.connect().execution_options(**options)


#: libpq's connection settings unless the URL gives its own (``?connect_timeout=…``).  libpq waits
#: for ever by default: a server that drops packets held each of a daemon's threads for minutes,
#: one after the other, and a peer gone mid-query kept a worker in recv() past systemd's stop.
POSTGRESQL_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,  # seconds, the whole connection set-up
    "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # ms that sent data may stay unacknowledged before the connection is dead
}
_LIBPQ_DRIVERS = ("psycopg", "psycopg2")  # other drivers (pg8000 …) do not take libpq's keywords


def _postgresql_defaults(query: Any) -> dict[str, Any]:
    """The defaults the URL, the environment (PGCONNECT_TIMEOUT) and a service file do not set."""
    if "service" in query or os.environ.get("PGSERVICE"):
        return {}  # the service file says what it wants; arguments given here would override it
    taken = set(query) | ({"connect_timeout"} if os.environ.get("PGCONNECT_TIMEOUT") else set())
    return {k: v for k, v in POSTGRESQL_CONNECT_DEFAULTS.items() if k not in taken}


def open_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for ``url``; errors name the URL without its password."""
    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        # One writer queue per engine (per database file and process).
        options: dict[str, Any] = {"connect_args": {"factory": _QueuedWriterConnection}} if sqlite else {}
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in _LIBPQ_DRIVERS:
            options["connect_args"] = _postgresql_defaults(parsed.query)
        # A server connection can die between uses (restart, failover, idle timeout): ping it
        # at checkout.  A SQLite file cannot; the ping would only cost each checkout a statement.
        engine = create_engine(url, echo=echo, pool_pre_ping=not sqlite, **options)
    except ModuleNotFoundError as exc:
        extra = _DRIVER_EXTRAS.get(exc.name or "")
        if extra is None:
            raise StorageError(f"database URL {_redacted(url)} is not usable: {exc}") from exc
        raise StorageError(f"database URL {_redacted(url)} needs the Python driver {exc.name}: "
                           f"install openxpki-py[{extra}]") from exc
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StorageError(f"database URL {_redacted(url)} is not usable: {exc}") from exc
    if engine.dialect.name == "sqlite":
        writer_lock = _WriterLock(engine.url.database)

        def connected(dbapi_conn: Any, record: Any) -> None:
            _sqlite_pragmas(dbapi_conn, record)
            if isinstance(dbapi_conn, _QueuedWriterConnection):
                dbapi_conn.writer_lock = writer_lock

        event.listen(engine, "connect", connected)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


class DatabaseUnavailable(StorageError):
    """The database server cannot be reached, or the connection was lost."""

    code = "storage.unavailable"


def storage_error(exc: SQLAlchemyError) -> StorageError:
    """The project's error for a failure SQLAlchemy raised; never carries the password.

    A lost or refused connection becomes :class:`DatabaseUnavailable` (the web
    layer answers 503, the CLI exits with the storage code), anything else a
    plain :class:`StorageError` naming the kind of failure.
    """
    if isinstance(exc, DisconnectionError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return DatabaseUnavailable("the connection to the database was lost; try again")
    if isinstance(exc, DBAPIError) and type(exc).__name__ in ("OperationalError", "InterfaceError"):
        # The driver's first line says why ("connection refused", "no such file");
        # drivers do not put the password there.
        reason = str(exc.orig).strip().splitlines()[0][:200] if exc.orig is not None else type(exc).__name__
        return DatabaseUnavailable(f"the database cannot be reached ({reason}): check database.url and that "
                                   "the database server is running")
    return StorageError(f"the database refused the operation ({type(exc).__name__})")


def create_schema(engine: Engine) -> None:
    """Create missing tables (idempotent)."""
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot create tables in {_redacted(str(engine.url))}: {exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}") from exc


def schema_present(engine: Engine) -> bool:
    return inspect(engine).has_table("certificate")


def _redacted(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for an error message
        return "<unparseable URL>"
