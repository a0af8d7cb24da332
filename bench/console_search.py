#!/usr/bin/env python3
"""The console's searches at scale: each search key with its index, against the same query without it.

    python bench/console_search.py [--rows 1000000] [--database sqlite|postgresql]

Fills a fresh database with ``--rows`` synthetic certificates (one owner per
four, one card per two), as many workflows and audit rows, then times the
console's own queries (openxpki_py/console/search.py, auditlog.py): a
certificate by serial, a person's certificates (first page), a card's
certificates, a person's workflows, workflows in a state, audit rows by
actor.  Then it drops the console's indexes and times the same queries
again: the ratio (without / with) is what the index buys.  Figures, not
pass/fail; the rows are synthetic (no DER), nothing is signed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text

from openxpki_py.console import auditlog, search
from openxpki_py.db.engine import create_schema, open_engine
from openxpki_py.db.schema import audit_log, certificate, token, workflow

CONSOLE_INDEXES = ("ix_certificate_serial", "ix_certificate_token_id", "ix_certificate_owner", "ix_token_owner",
                   "ix_workflow_creator", "ix_workflow_state", "ix_audit_log_actor")
BATCH = 10_000


def fill(engine: Any, rows: int) -> dict[str, str]:
    now = datetime.now(timezone.utc)
    probe: dict[str, str] = {}
    with engine.begin() as conn:
        conn.execute(token.insert(), [{"serial": f"CARD{i:08d}", "owner": f"user{i * 2:07d}", "status": "active",
                                       "first_seen": now, "last_seen": now} for i in range(rows // 2 + 1)])
    for start in range(0, rows, BATCH):
        certs, flows, audits = [], [], []
        for i in range(start, min(start + BATCH, rows)):
            serial = secrets.token_hex(16).lstrip("0") or "1"
            owner = f"user{i // 4:07d}"
            certs.append({"serial": serial, "issuer": "CN=Bench CA", "issuer_key_identifier": "bench",
                          "subject": f"CN={owner}", "status": "valid", "not_before": now,
                          "not_after": now + timedelta(days=365), "owner": owner, "token_id": i // 2 + 1,
                          "profile": "smartcard_logon", "public_key_sha256": secrets.token_hex(32),
                          "der": b"-", "created_at": now})
            flows.append({"wf_type": "certificate_issuance", "state": "ISSUED" if i % 100 else "PENDING_APPROVAL",
                          "proc_state": "finished" if i % 100 else "manual", "creator": owner,
                          "creator_role": "User", "retry_count": 0, "version": 1, "created_at": now, "updated_at": now})
            audits.append({"logged_at": now, "actor": owner, "event": "cert.issue", "outcome": "ok",
                           "target": serial, "prev_hash": f"p{i}", "entry_hash": f"e{i}"})
            if i == rows // 2:
                probe = {"serial": serial, "owner": owner, "card": str(i // 2 + 1)}
        with engine.begin() as conn:
            conn.execute(certificate.insert(), certs)
            conn.execute(workflow.insert(), flows)
            conn.execute(audit_log.insert(), audits)
    return probe


def timed(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm the cache: both runs compare hot pages
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def queries(engine: Any, probe: dict[str, str]) -> dict[str, Callable[[], Any]]:
    return {
        "certificate by serial": lambda: search.find_certificate_row(engine, probe["serial"]),
        "person's certificates": lambda: search.certificates_of(engine, probe["owner"]),
        "card's certificates": lambda: search.card_certificates(engine, int(probe["card"])),
        "person's workflows": lambda: search.workflows_of(engine, probe["owner"]),
        "workflows in a state": lambda: search.find_workflows(engine, state="PENDING_APPROVAL"),
        "audit rows by actor": lambda: auditlog.search(engine, auditlog.AuditFilter(actor=probe["owner"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-console-"))
    url = f"sqlite:///{folder / 'bench.db'}" if args.database == "sqlite" else \
        os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    engine = open_engine(url)
    create_schema(engine)
    started = time.perf_counter()
    probe = fill(engine, args.rows)
    print(f"{args.rows} certificates, workflows and audit rows in {time.perf_counter() - started:.0f} s ({args.database})")
    with_index = {name: timed(fn, args.repeat) for name, fn in queries(engine, probe).items()}
    with engine.begin() as conn:
        for name in CONSOLE_INDEXES:
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    without = {name: timed(fn, max(args.repeat // 10, 1)) for name, fn in queries(engine, probe).items()}
    print(f"{'query':<26} {'indexed ms':>11} {'no index ms':>12} {'ratio':>8}")
    for name, seconds in with_index.items():
        print(f"{name:<26} {seconds * 1000:11.2f} {without[name] * 1000:12.2f} {without[name] / seconds:8.0f}x")
    engine.dispose()


if __name__ == "__main__":
    main()
