"""What one personalization costs the database: SQL statements and transactions, per HTTP round trip.

``count_personalization`` builds the same WSGI application Apache runs
(same config, same database) in this process, counts every statement the
engine sends (``before_cursor_execute``) and every transaction it ends
(``commit``, ``rollback``), and plays one user's whole flow through it
(bench/personalizing.py's ``personalize``, in-process instead of over a
socket; Apache's part — Basic authentication setting ``REMOTE_USER`` and
the ``/token`` rewrite — is done here).  Counts do not depend on load, so
before/after figures compare exactly.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event

MOUNT = "/openxpki"


@dataclass
class SqlCounts:
    statements: int = 0
    transactions: int = 0  # begun (reads included: the engine opens one per connection use)
    commits: int = 0
    seconds: float = 0.0  # in-process CPU time of one personalization (mean), if timed
    wall: float = 0.0  # and its wall time: CPU plus waiting for the database (and for other processes)
    per_request: list[tuple[str, int, int]] = field(default_factory=list)  # (request, statements, transactions)
    kinds: Counter[str] = field(default_factory=Counter)  # first word of each statement, LOCK counted apart
    # SQLite: how long the process's write lock was held per personalization (mean of the timed runs), by request
    write_lock: Counter[str] = field(default_factory=Counter)


class _Meter:
    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        self.commits = 0
        self.kinds: Counter[str] = Counter()
        self.lock = threading.Lock()

    def statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        with self.lock:
            self.statements += 1
            self.kinds[statement.split(None, 1)[0].upper()] += 1

    def begun(self, _conn: Any) -> None:
        with self.lock:
            self.transactions += 1

    def committed(self, _conn: Any) -> None:
        with self.lock:
            self.commits += 1


class _WriteLockMeter:
    """How long each request held SQLite's write lock (``db/engine.py``: ``_QueuedWriterConnection``).

    On SQLite one write transaction runs at a time: at 20 users the threads
    of a daemon wait for it most of the time, so the time a personalization
    spends inside write transactions bounds its throughput, whatever the
    cores.  Measured from taking the process's writer queue to giving it
    back (BEGIN IMMEDIATE to after COMMIT or ROLLBACK), per request.
    """

    def __init__(self) -> None:
        self.request = "?"
        self.held: Counter[str] = Counter()
        self.since: dict[int, float] = {}

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        from openxpki_py.db.engine import _QueuedWriterConnection as Queued

        take, give = Queued.take_queue, Queued.give_back_queue
        meter = self

        def timed_take(conn: Any) -> None:
            take(conn)
            if conn.holds_queue:
                meter.since.setdefault(id(conn), time.perf_counter())

        def timed_give(conn: Any) -> None:
            started = meter.since.pop(id(conn), None)
            if started is not None:
                meter.held[meter.request] += time.perf_counter() - started
            give(conn)

        Queued.take_queue, Queued.give_back_queue = timed_take, timed_give  # type: ignore[method-assign]
        try:
            yield
        finally:
            Queued.take_queue, Queued.give_back_queue = take, give  # type: ignore[method-assign]


def _wsgi_client(app: Any, meter: _Meter, counts: SqlCounts, lock_meter: _WriteLockMeter) -> Any:
    """A ``personalizing.Client`` whose round trips go into ``app`` in-process."""
    from personalizing import Client

    class WsgiClient(Client):
        def __init__(self, port: int, user: str | None = None) -> None:
            super().__init__(port, None)  # no Basic header: REMOTE_USER is set as Apache would
            self.user = user

        def send(self, method: str, path: str, data: str | None,
                 headers: dict[str, str]) -> tuple[int, dict[str, str], list[str], str]:
            from werkzeug.test import EnvironBuilder, run_wsgi_app

            if path.rstrip("/") == "/token":
                path = f"{MOUNT}/deeplink"  # apache/token-rewrite.conf
            assert path.startswith(MOUNT), path
            builder = EnvironBuilder(path=path[len(MOUNT):] or "/", base_url=f"http://127.0.0.1{MOUNT}",
                                     method=method, data=data, headers=headers)
            environ = builder.get_environ()
            if self.user:
                environ["REMOTE_USER"] = self.user
                environ["AUTH_TYPE"] = "Basic"
            before = (meter.statements, meter.transactions)
            lock_meter.request = f"{method} {re.sub(r'/[0-9]+(?=/|$)', '/N', path.split('?')[0])}"
            body, status, response_headers = run_wsgi_app(app, environ, buffered=True)
            text = b"".join(body).decode()
            counts.per_request.append((f"{method} {path.split('?')[0]}", meter.statements - before[0],
                                       meter.transactions - before[1]))
            return (int(status.split()[0]), dict(response_headers), response_headers.getlist("Set-Cookie"), text)

    return WsgiClient


def count_personalization(config: Path, user: str, keys: Sequence[Any], *, profile: int = 0,
                          timed: int = 0) -> SqlCounts:
    """One whole personalization of ``user`` in-process; what it cost the database.

    ``timed``: then run that many more and keep their mean CPU time in-process (``seconds``: no HTTP, no Apache).
    ``profile``: then run that many more under cProfile and print the top 20 by own time and by cumulative time.
    """
    from personalizing import personalize

    from openxpki_py.config import load_config
    from openxpki_py.services import Services
    from openxpki_py.web.app import create_app

    settings = load_config(config)
    services = Services(settings)
    try:
        app = create_app(settings, services)
        meter = _Meter()
        counts = SqlCounts()
        lock_meter = _WriteLockMeter()
        client = _wsgi_client(app, meter, counts, lock_meter)
        # A first request builds what every daemon builds once (templates, the CA's certificate).
        personalize(0, user, keys[:2], f"count-warm-{user}", client=client)
        counts.per_request.clear()
        event.listen(services.db, "before_cursor_execute", meter.statement)
        event.listen(services.db, "begin", meter.begun)
        event.listen(services.db, "commit", meter.committed)
        personalize(0, user, keys[2:4], f"count-{user}", client=client)
        counts.statements, counts.transactions, counts.commits = meter.statements, meter.transactions, meter.commits
        counts.kinds = Counter(meter.kinds)  # a copy: later runs go on counting
        counted = len(counts.per_request)
        if timed:
            # CPU time of this process: on a shared machine it depends far less on the others' load than wall time.
            cpu, wall = time.process_time(), time.perf_counter()
            with lock_meter.measuring():
                for i in range(timed):
                    personalize(0, user, keys[4 + 2 * i:6 + 2 * i], f"timed-{i}-{user}", client=client)
            counts.seconds = (time.process_time() - cpu) / timed
            counts.wall = (time.perf_counter() - wall) / timed
            counts.write_lock = Counter({k: v / timed for k, v in lock_meter.held.items()})
        if profile:
            first = 4 + 2 * timed  # keys the timed runs did not use: a key is certified once
            _profile(lambda i: personalize(0, user, keys[first + 2 * i:first + 2 + 2 * i], f"profile-{i}-{user}",
                                           client=client), profile)
        del counts.per_request[counted:]  # the timed and profiled runs added theirs
        return counts
    finally:
        services.close()


def _profile(run: Any, n: int) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(n):
        run(i)
    profiler.disable()
    print(f"cProfile of {n} in-process personalizations (server side only; the agent's keys were made before)")
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(order).print_stats(20 if order == "tottime" else 40)


def print_counts(counts: SqlCounts, *, detail: bool = False) -> None:
    kinds = ", ".join(f"{k} {n}" for k, n in counts.kinds.most_common())
    print(f"per personalization: {counts.statements} SQL statements ({kinds}); {counts.transactions} transactions "
          f"({counts.commits} committed); {len(counts.per_request)} HTTP round trips"
          + (f"; in-process CPU {counts.seconds * 1000:.1f} ms, wall {counts.wall * 1000:.1f} ms" if counts.seconds else ""))
    if counts.write_lock:
        held = sum(counts.write_lock.values())
        print(f"SQLite write lock held {held * 1000:.1f} ms per personalization ({held / counts.wall:.0%} of its wall "
              f"time; one writer at a time, so at most {1 / held:.0f} personalizations/s however many cores): "
              + ", ".join(f"{request} {seconds * 1000:.1f}" for request, seconds in counts.write_lock.most_common()))
    if detail:
        for request, statements, transactions in counts.per_request:
            print(f"    {request:<46} {statements:>4} statements {transactions:>3} transactions")


def main() -> None:
    """``sqlcount.py CONFIG USER [--detail] [--profile=N] [--time=N]``: bench/personalization.py runs it in a fresh process.

    A process of its own: the PKCS#11 module is loaded once per process, as in a mod_wsgi daemon.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    args = sys.argv[1:]
    detail = "--detail" in args
    profile = int(next((a.split("=")[1] for a in args if a.startswith("--profile=")), "0"))
    timed = int(next((a.split("=")[1] for a in args if a.startswith("--time=")), "0"))
    config, user = [a for a in args if not a.startswith("--")]
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(4 + 2 * (profile + timed))]
    counts = count_personalization(Path(config), user, keys, profile=profile, timed=timed)
    print_counts(counts, detail=detail)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
