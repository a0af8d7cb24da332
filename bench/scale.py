#!/usr/bin/env python3
"""Personalizations per second: one node + one worker against two nodes + two workers, one PostgreSQL.

    python bench/scale.py [--users 20] [--rounds 3] [--processes 2] [--threads 10]

One instance (CA key in SoftHSM, LDIF directory, a fresh PostgreSQL
database) and the flow of bench/personalization.py (the browser's and the
agent's HTTP calls, card keys made beforehand in software; every
personalization has its own user).  Two setups on the same config and
database: one Apache node (``openxpki-py serve``, ``--processes`` mod_wsgi
daemons) with one ``openxpki-py worker``, and two nodes sharing the same
total of daemons with two workers, where each user's browser talks to one
node and its agent to the other, as a load balancer without affinity would
send them.  Their rounds alternate (the other setup's extra worker paused),
so a busy machine weighs on both alike.  Printed: personalizations/s of
each, the ratio, and what must be zero afterwards: certificates an agent
acknowledged but the store lacks, issuances or types issued twice,
workflows not final, personalizations that did not succeed; and the audit
chain's verdict.

On one machine both nodes share its cores, so the ratio measures what
splitting the work across nodes costs (row claims, the audit chain's lock,
more connections), not added capacity: near 1 means the nodes coordinate
through the database without losing throughput; on separate machines the
app tier's capacity adds up until the database, the audit chain's lock or
the HSM is the limit.
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
from dataclasses import dataclass, field
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
        worker.send_signal(signal.SIGCONT)  # a paused worker cannot act on SIGTERM
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


@dataclass
class Setup:
    """Nodes (by the ports each user's browser and agent use) and the workers that run only for it."""

    label: str
    tag: str
    port_of: Callable[[int], tuple[int, int]]
    own_workers: list[subprocess.Popen[bytes]]
    elapsed: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    def round(self, batch: list[str], keys: dict[str, list[Any]], others: list[Setup]) -> None:
        # Only this setup's workers run (a paused one neither polls nor claims).
        for other in others:
            for worker in other.own_workers:
                worker.send_signal(signal.SIGSTOP)
        for worker in self.own_workers:
            worker.send_signal(signal.SIGCONT)
        started = time.perf_counter()
        self.outcomes += run_round(batch, keys, f"{self.tag}{len(self.outcomes)}", self.port_of)
        self.elapsed += time.perf_counter() - started

    @property
    def rate(self) -> float:
        return len(self.outcomes) / self.elapsed

    def line(self, users: int) -> str:
        server = [o.server for o in self.outcomes]
        return (f"{self.label}: {len(self.outcomes)} personalizations, {users} at once: {self.rate:.1f}/s "
                f"({2 * self.rate:.1f} certificates/s); server time p50 {pct(server, .5) * 1000:.0f} ms "
                f"p99 {pct(server, .99) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setup (default 3)")
    parser.add_argument("--processes", type=int, default=2, help="mod_wsgi daemons in all (split over two nodes)")
    parser.add_argument("--threads", type=int, default=10)
    args = parser.parse_args()
    names = [f"user{i:03d}" for i in range(2 + 2 * args.users * args.rounds)]
    keys = {u: [rsa.generate_private_key(65537, 2048) for _ in range(2)] for u in names}
    folder = Path(tempfile.mkdtemp(prefix="openxpki-bench-scale-"))
    folder.chmod(0o755)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with contextlib.ExitStack() as stack:
            db_url = stack.enter_context(temporary_postgresql())
            config, env = setup(folder, len(names), db_url, workflow={"worker": {"poll_interval": 0.5}})
            print(f"CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; PostgreSQL; CA key RSA-2048 in SoftHSM; "
                  f"{args.users} users at once, {args.rounds} rounds per setup, the setups' rounds interleaved")
            split = max(1, args.processes // 2)
            nodes = [serve(config, env, folder, root, processes=n, threads=args.threads)
                     for root, n in (("httpd-one", args.processes), ("httpd-a", split), ("httpd-b", split))]
            for node in nodes:
                stack.callback(node.stop)
            workers += [start_worker(config, env), start_worker(config, env)]
            single = nodes[0].port
            pair = (nodes[1].port, nodes[2].port)
            one = Setup(f"1 node ({args.processes} processes x {args.threads} threads) + 1 worker", "one",
                        lambda _i: (single, single), workers[:1])
            # Each user's browser on one node, its agent on the other: no affinity.
            two = Setup(f"2 nodes ({split} + {split} processes x {args.threads} threads) + 2 workers", "two",
                        lambda i: (pair[i % 2], pair[1 - i % 2]), workers)
            run_round(names[:1], keys, "warm", one.port_of)
            run_round(names[1:2], keys, "warm", two.port_of)
            queue = names[2:]
            for _ in range(args.rounds):
                for current, other in ((one, two), (two, one)):
                    batch, queue = queue[:args.users], queue[args.users:]
                    current.round(batch, keys, [other])
            print(one.line(args.users))
            print(two.line(args.users))
            print(f"ratio two nodes / one node: {two.rate / one.rate:.2f}")
            for worker in workers:
                stop_worker(worker)
            check = store_check(db_url, one.outcomes + two.outcomes)
            print(f"after {len(one.outcomes) + len(two.outcomes)} personalizations: {check.line()}"
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
