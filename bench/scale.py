#!/usr/bin/env python3
"""Personalizations per second on one node + one worker, then on two nodes + two workers, one PostgreSQL.

    python bench/scale.py [--users 20] [--rounds 3] [--processes 2] [--threads 10]

One instance (CA key in SoftHSM, LDIF directory, a fresh PostgreSQL
database), the flow of bench/personalization.py (the browser's and the
agent's HTTP calls, card keys made beforehand in software).  First one
Apache node (``openxpki-py serve``, ``--processes`` mod_wsgi daemons) and
one ``openxpki-py worker``; then a second node and a second worker are
started on the same config and database, the processes split between the
two nodes (same total), and each user's browser talks to one node and its
agent to the other, as a load balancer without affinity would send them.
Every personalization has its own user.  Printed: personalizations/s for
each setup, their ratio, and what must be zero afterwards: certificates an
agent acknowledged but the store lacks, issuances or types issued twice,
workflows not final, personalizations that did not succeed, and the audit
chain's verdict.

On one machine both nodes share its cores, so the ratio measures what
splitting the work across nodes costs (row claims, the audit chain's lock,
more connections), not added capacity: near 1 means the nodes coordinate
through the database without losing throughput; on separate machines the
capacity of the app tier adds up until the database or the HSM is the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from personalizing import (  # noqa: E402
    Outcome,
    cli,
    pct,
    run_round,
    serve,
    setup,
    start_worker,
    store_check,
    temporary_postgresql,
)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def measure(label: str, tag: str, users: list[str], keys: dict[str, list[Any]], rounds: int,
            port_of: Callable[[int], tuple[int, int]]) -> tuple[float, list[Outcome]]:
    """``rounds`` rounds of all ``users`` at once; (personalizations/s, outcomes)."""
    outcomes: list[Outcome] = []
    per_round = len(users) // rounds
    started = time.perf_counter()
    for r in range(rounds):
        batch = users[r * per_round:(r + 1) * per_round]
        outcomes += run_round(batch, {u: keys[u] for u in batch}, f"{tag}{r}", port_of)
    rate = len(outcomes) / (time.perf_counter() - started)
    server = [o.server for o in outcomes]
    print(f"{label}: {len(outcomes)} personalizations, {per_round} at once: {rate:.1f}/s "
          f"({2 * rate:.1f} certificates/s); server time p50 {pct(server, .5) * 1000:.0f} ms "
          f"p99 {pct(server, .99) * 1000:.0f} ms")
    return rate, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setup (default 3)")
    parser.add_argument("--processes", type=int, default=2, help="mod_wsgi daemons in all (split over two nodes)")
    parser.add_argument("--threads", type=int, default=10)
    args = parser.parse_args()
    per_setup = args.users * args.rounds
    names = [f"user{i:03d}" for i in range(2 + 2 * per_setup)]
    keys = {u: [rsa.generate_private_key(65537, 2048) for _ in range(2)] for u in names}
    warm, single, double = names[:2], names[2:2 + per_setup], names[2 + per_setup:]
    folder = Path(tempfile.mkdtemp(prefix="openxpki-bench-scale-"))
    folder.chmod(0o755)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with contextlib.ExitStack() as stack:
            db_url = stack.enter_context(temporary_postgresql())
            config, env = setup(folder, len(names), db_url, workflow={"worker": {"poll_interval": 0.5}})
            print(f"CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; PostgreSQL; CA key RSA-2048 in SoftHSM; "
                  f"{args.users} users at once, {args.rounds} rounds per setup")

            a = serve(config, env, folder, "httpd-a", processes=args.processes, threads=args.threads)
            stack.callback(a.stop)
            workers.append(start_worker(config, env))
            run_round(warm[:1], keys, "warm", lambda _i: (a.port, a.port))
            one, one_outcomes = measure(
                f"1 node ({args.processes} processes x {args.threads} threads) + 1 worker", "one", single, keys,
                args.rounds, lambda _i: (a.port, a.port))

            # The same total of daemons, split: a restarted node A and a new node B.
            a.stop()
            split = max(1, args.processes // 2)
            a = serve(config, env, folder, "httpd-a2", processes=split, threads=args.threads)
            stack.callback(a.stop)
            b = serve(config, env, folder, "httpd-b", processes=split, threads=args.threads)
            stack.callback(b.stop)
            workers.append(start_worker(config, env))
            ports = (a.port, b.port)
            run_round(warm[1:], keys, "warm", lambda _i: ports)
            two, two_outcomes = measure(
                f"2 nodes ({split} + {split} processes x {args.threads} threads) + 2 workers", "two", double, keys,
                args.rounds, lambda i: (ports[i % 2], ports[1 - i % 2]))
            print(f"ratio two nodes / one node: {two / one:.2f}")

            for worker in workers:
                stop_worker(worker)
            check = store_check(db_url, one_outcomes + two_outcomes)
            print(f"after {len(one_outcomes) + len(two_outcomes)} personalizations: {check.line()}"
                  + ("" if check.zero() else "  <-- MUST BE ZERO"))
            try:
                print(f"audit verify: {cli(config, env, 'audit', 'verify').strip()}")
            except subprocess.CalledProcessError as exc:
                print(f"audit verify FAILED (exit {exc.returncode}): {exc.stderr.strip()}  <-- MUST PASS")
    finally:
        for worker in workers:
            stop_worker(worker)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
