#!/usr/bin/env python3
"""Audited commits per second on PostgreSQL: the chain's lock held to the commit, or the queue.

    python bench/audit_append.py [--threads 20] [--seconds 3] [--rounds 2]

Each thread runs audited transactions back to back, as app nodes' requests
do: one audit row, then ``--work-ms`` of the rest of the transaction (a
server-side ``pg_sleep``: the statements and HSM call an action makes after
auditing, without using this process's CPU), then the commit (PostgreSQL's
default durable commit: a WAL flush each).  Two ways, in
alternating rounds on the same fresh database, so machine load weighs on
both alike:

- ``held``: the row is chained inside the transaction (``lock_chain`` then
  ``link_rows``, what ``append_audit`` did before issue #15 and still does
  on SQLite): the lock is held through the commit's flush, so the commits
  of all threads run one after another.
- ``queued``: ``append_audit`` queues the row (``audit_pending``) and the
  thread chains after its commit (``chain_queued``, as the web app does
  after each request): the commits run in parallel, the chaining
  transactions take the whole queue each.

Printed: transactions/s of each, the ratio, and that the chain verifies
with every row in it exactly once.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from personalizing import temporary_postgresql  # noqa: E402

from openxpki_py.audit import append_audit, verify_chain  # noqa: E402
from openxpki_py.audit.chain import link_rows, lock_chain  # noqa: E402
from openxpki_py.audit.pending import chain_queued  # noqa: E402
from openxpki_py.db.engine import create_schema, open_engine  # noqa: E402
from openxpki_py.db.schema import audit_log, audit_pending  # noqa: E402


WORK = "SELECT pg_sleep(%s)"


def held(db: Engine, n: int, work: float) -> None:
    with db.begin() as conn:
        lock_chain(conn)
        link_rows(conn, [{"logged_at": datetime.now(timezone.utc).replace(microsecond=0), "actor": "bench",
                          "role_name": None, "event": "bench.held", "outcome": "ok", "target": str(n),
                          "details": None}])
        conn.exec_driver_sql(WORK, (work,))


def queued(db: Engine, n: int, work: float) -> None:
    with db.begin() as conn:
        append_audit(conn, actor="bench", event="bench.queued", target=str(n))
        conn.exec_driver_sql(WORK, (work,))
    chain_queued()


def run(db: Engine, how: str, threads: int, seconds: float, work: float) -> tuple[int, float]:
    """Transactions done, and per second, by ``threads`` threads running ``how`` for ``seconds``."""
    action = held if how == "held" else queued
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            action(db, i, work)
            done[i] += 1
    workers = [threading.Thread(target=contextvars.Context().run, args=(loop, i)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done), sum(done) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--threads", type=int, default=12, help="at most the engine's 15 connections")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work-ms", type=float, default=2.0, help="the transaction's work after its audit row")
    args = parser.parse_args()

    with temporary_postgresql() as url:
        db = open_engine(url)
        create_schema(db)
        with db.connect() as conn:
            sync = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        print(f"CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; {args.threads} threads, "
              f"{args.seconds:.0f} s per round, {args.work_ms:g} ms of work after the audit row; "
              f"synchronous_commit = {sync}")
        rates: dict[str, list[float]] = {"held": [], "queued": []}
        total = 0
        for r in range(args.rounds):
            for how in ("held", "queued"):
                done, rate = run(db, how, args.threads, args.seconds, args.work_ms / 1000)
                total += done
                rates[how].append(rate)
                print(f"  round {r + 1} {how:7} {rates[how][-1]:7.0f} audited transactions/s")
        held_rate, queued_rate = statistics.median(rates["held"]), statistics.median(rates["queued"])
        print(f"median: held {held_rate:.0f}/s, queued {queued_rate:.0f}/s: x{queued_rate / held_rate:.2f}")
        with db.connect() as conn:
            report = verify_chain(conn)
            rows = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
            left = conn.execute(select(func.count()).select_from(audit_pending)).scalar_one()
        print(f"chain: {'intact' if report.ok else 'BROKEN'}, {rows} rows for {total} audited transactions, "
              f"{left} left queued")
        db.dispose()


if __name__ == "__main__":
    main()
