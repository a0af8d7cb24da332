"""The audit trail against an attacker with SQL access (SoftHSM audit key, SQLite and PostgreSQL).

Every test builds the same trail: rows 1–4, checkpoint 1, rows 5–8,
checkpoint 2, rows 9–10 (not yet anchored), then tampers with it the way
someone with SQL access would — using the project's own hash function, as
an attacker who read the code would — and runs ``openxpki-py audit verify``
as a subprocess (exit code 12 and one line naming the first bad row) and
:func:`verify_chain` in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import Engine

from openxpki_py.audit import append_audit
from openxpki_py.audit.chain import GENESIS, entry_hash, hashed_part
from openxpki_py.audit.checkpoint import Checkpoint
from openxpki_py.audit.pending import chain_queued
from openxpki_py.audit.service import AuditCheckpoints
from openxpki_py.audit.verify import ChainReport
from openxpki_py.db.schema import audit_checkpoint, audit_log
from openxpki_py.errors import AuditChainBroken

CLI = str(Path(sys.executable).parent / "openxpki-py")
EXIT_AUDIT = 12


def with_audit_key(settings: dict[str, Any]) -> None:
    """audit.checkpoint with its own EC key on the CA's token (another label)."""
    ca_key = settings["ca"]["key"]
    folder = Path(settings["ca"]["crl"]["publish_dir"]).parent
    settings["audit"] = {"checkpoint": {
        "key": {**ca_key, "algorithm": "ec-p256", "key_label": "audit-checkpoint"},
        "interval_minutes": 60,
        "file": str(folder / "audit-checkpoints.log"),
    }}


@dataclass
class Trail:
    inst: Any
    db: Engine
    checkpoints: AuditCheckpoints

    @property
    def file(self) -> Path:
        path = self.checkpoints.config.file
        assert path is not None
        return path

    def add_rows(self, n: int, actor: str = "alice") -> None:
        for _ in range(n):
            number = self.count() + 1  # read before: SQLite's write transaction is exclusive
            with self.db.begin() as conn:
                append_audit(conn, actor=actor, event="test.event", target=f"t{number}", details={"n": number})
            chain_queued()  # as every request, worker round and command does after its commit

    def count(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())

    def ids(self) -> list[int]:
        with self.db.connect() as conn:
            return [int(i) for i in conn.execute(select(audit_log.c.id).order_by(audit_log.c.id)).scalars()]

    def verify(self) -> ChainReport:
        return self.checkpoints.verify()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "--config", str(self.inst.config_path), "audit", *args],
                              capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.inst.folder, env=os.environ.copy())


@pytest.fixture
def trail(make_instance: Callable[..., Any], db_engine: Engine) -> Trail:
    inst = make_instance(db_engine, init_ca=False, overrides=with_audit_key)
    checkpoints = inst.services.audit_checkpoints
    assert checkpoints is not None
    checkpoints.init_key()
    t = Trail(inst, inst.services.db, checkpoints)
    t.add_rows(4)
    assert checkpoints.write() is not None
    t.add_rows(4)
    assert checkpoints.write() is not None
    t.add_rows(2)
    return t


# --- what the attacker does ----------------------------------------------------------


def rehash_from(db: Engine, first_id: int) -> None:
    """Recompute prev_hash/entry_hash from ``first_id`` on, exactly as append_audit does."""
    with db.begin() as conn:
        prev = GENESIS
        for r in conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings().all():
            if r["id"] >= first_id:
                new = entry_hash(prev, hashed_part(r))
                conn.execute(update(audit_log).where(audit_log.c.id == r["id"])
                             .values(prev_hash=prev, entry_hash=new))
                prev = new
            else:
                prev = r["entry_hash"]


def forge_append(db: Engine, logged_at: datetime) -> None:
    """Append a row hashed the way the code hashes, with a date of the forger's choice."""
    with db.begin() as conn:
        prev = conn.execute(select(audit_log.c.entry_hash).order_by(audit_log.c.id.desc()).limit(1)).scalar() or GENESIS
        row = {"logged_at": logged_at.replace(microsecond=0), "actor": "bob", "role_name": "CA Operator",
               "event": "auth.role.grant", "outcome": "ok", "target": None, "details": None}
        conn.execute(audit_log.insert(), {**row, "prev_hash": prev, "entry_hash": entry_hash(prev, row)})


def change_middle_row(t: Trail) -> int:
    target = t.ids()[2]
    with t.db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == target).values(actor="mallory"))
    return target


def change_last_row(t: Trail) -> int:
    target = t.ids()[-1]
    with t.db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == target).values(outcome="refused"))
    return target


def change_timestamp(t: Trail) -> int:
    target = t.ids()[4]
    with t.db.begin() as conn:
        when = conn.execute(select(audit_log.c.logged_at).where(audit_log.c.id == target)).scalar_one()
        conn.execute(update(audit_log).where(audit_log.c.id == target).values(logged_at=when - timedelta(days=1)))
    return target


def delete_middle_row(t: Trail) -> int:
    ids = t.ids()
    with t.db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == ids[5]))
    return ids[6]  # the next row no longer links to its predecessor


def truncate_after_checkpoint(t: Trail) -> int:
    ids = t.ids()
    with t.db.begin() as conn:  # rows 7-10: checkpoint 2 covered 7 and 8
        conn.execute(delete(audit_log).where(audit_log.c.id >= ids[6]))
    return ids[7]  # the row checkpoint 2 signed


def forged_backdated_row(t: Trail) -> int:
    last = t.checkpoints.verify().last_checkpoint
    assert last is not None
    forge_append(t.db, last.created_at - timedelta(hours=1))
    return t.ids()[-1]


def forged_rows_replace_tail(t: Trail) -> int:
    ids = t.ids()
    with t.db.begin() as conn:  # drop rows 8-10, append three forged ones: the count is back
        conn.execute(delete(audit_log).where(audit_log.c.id >= ids[7]))
    for _ in range(3):
        forge_append(t.db, datetime.now(timezone.utc))
    return ids[7]


def rehash_tail(t: Trail) -> int:
    ids = t.ids()
    with t.db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == ids[1]).values(event="nothing.happened"))
    rehash_from(t.db, ids[1])
    return ids[3]  # the first checkpointed row after the change


def empty_checkpoint_table(t: Trail) -> None:
    with t.db.begin() as conn:
        conn.execute(delete(audit_checkpoint))


def drop_checkpoint_table(t: Trail) -> None:
    with t.db.begin() as conn:
        conn.execute(text("DROP TABLE audit_checkpoint"))


# tampering -> the codes its first problem may carry
ROW_TAMPERING: dict[str, tuple[Callable[[Trail], int], set[str]]] = {
    "change_middle_row": (change_middle_row, {"chain.content"}),
    "change_last_row": (change_last_row, {"chain.content"}),
    "change_timestamp": (change_timestamp, {"chain.content"}),
    "delete_middle_row": (delete_middle_row, {"chain.link"}),
    "truncate_after_checkpoint": (truncate_after_checkpoint, {"checkpoint.row_missing"}),
    "forged_backdated_row": (forged_backdated_row, {"chain.backdated"}),
    # SQLite hands the deleted ids out again, PostgreSQL does not.
    "forged_rows_replace_tail": (forged_rows_replace_tail, {"checkpoint.row_missing", "checkpoint.hash"}),
    "rehash_tail": (rehash_tail, {"checkpoint.hash"}),
}


# --- tests ---------------------------------------------------------------------------------


def test_intact_trail_verifies_clean(trail: Trail) -> None:
    report = trail.verify()
    assert report.ok, report.problems
    assert (report.rows, len(report.checkpoints), report.unanchored_rows) == (10, 2, 2)
    assert report.warnings == []
    assert len(trail.file.read_text().splitlines()) == 2
    result = trail.cli("verify")
    assert result.returncode == 0, result.stderr
    assert "audit trail intact: 10 row(s)" in result.stdout and "2 newer row(s) not yet anchored" in result.stdout
    data = json.loads(trail.cli("verify", "--json").stdout)
    assert data["ok"] is True and data["checkpoints"] == 2 and data["first_problem"] is None


def test_appends_in_one_transaction_across_savepoints_stay_chained(trail: Trail) -> None:
    # Workflow steps append inside savepoints: one rolled back takes its rows
    # (and on PostgreSQL its lock) with it, and the next append must chain to
    # what is really there — a guard for any caching of the head (issue #15).
    with trail.db.begin() as conn:
        append_audit(conn, actor="alice", event="test.event", target="a")
        with pytest.raises(RuntimeError), conn.begin_nested():
            append_audit(conn, actor="alice", event="test.event", target="rolled back")
            raise RuntimeError("the step failed")
        append_audit(conn, actor="alice", event="test.event", target="b")
        with conn.begin_nested():
            append_audit(conn, actor="alice", event="test.event", target="c")
        append_audit(conn, actor="alice", event="test.event", target="d")
    with trail.db.begin() as conn:
        append_audit(conn, actor="alice", event="test.event", target="e")
    report = trail.verify()
    assert report.ok, report.problems
    assert report.rows == 15


@pytest.mark.parametrize("name", sorted(ROW_TAMPERING))
def test_row_tampering_is_detected(trail: Trail, name: str) -> None:
    tamper, codes = ROW_TAMPERING[name]
    bad_row = tamper(trail)
    report = trail.verify()
    first = report.first_problem
    assert first is not None and first.row_id == bad_row and first.code in codes, report.problems
    result = trail.cli("verify")
    assert result.returncode == EXIT_AUDIT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"openxpki-py: error [audit.chain]: row {bad_row}: "), lines
    assert f"[{first.code}]" in lines[0]


@pytest.mark.parametrize("tamper", [empty_checkpoint_table, drop_checkpoint_table])
def test_deleted_checkpoints_are_detected_from_the_file(trail: Trail, tamper: Callable[[Trail], None]) -> None:
    tamper(trail)
    report = trail.verify()
    codes = {(p.code, p.checkpoint) for p in report.problems}
    assert {("checkpoint.missing_in_db", 1), ("checkpoint.missing_in_db", 2)} <= codes
    # The file alone still anchors the chain: both checkpoints match it.
    assert len(report.checkpoints) == 2
    result = trail.cli("verify", "--json")
    assert result.returncode == EXIT_AUDIT
    assert json.loads(result.stdout)["first_problem"]["code"] in {"checkpoint.missing_in_db", "checkpoint.table"}
    assert result.stderr.startswith(("openxpki-py: error [audit.chain]: checkpoint 1: is in ",
                                     "openxpki-py: error [audit.chain]: audit trail: the audit_checkpoint table"))


def test_rehash_with_rewritten_checkpoints_fails_the_signature(trail: Trail) -> None:
    first_checkpointed = rehash_tail(trail)
    with trail.db.begin() as conn:  # the attacker also "fixes" the checkpoint rows
        for r in conn.execute(select(audit_checkpoint)).mappings().all():
            new = conn.execute(select(audit_log.c.entry_hash).where(audit_log.c.id == r["row_id"])).scalar_one()
            conn.execute(update(audit_checkpoint).where(audit_checkpoint.c.id == r["id"]).values(entry_hash=new))
    report = trail.verify()
    assert {"checkpoint.signature", "checkpoint.differs", "checkpoint.hash"} <= {p.code for p in report.problems}
    # The file's copy still carries a valid signature, and the old hash.
    first = report.first_problem
    assert first is not None and (first.row_id, first.code) == (first_checkpointed, "checkpoint.hash")


def test_deleted_file_lines_are_detected(trail: Trail) -> None:
    lines = trail.file.read_text().splitlines()
    trail.file.write_text(lines[1] + "\n")
    report = trail.verify()
    assert [(p.code, p.checkpoint) for p in report.problems] == [("checkpoint.missing_in_file", 1)]


def test_no_checkpoint_is_signed_over_a_broken_chain(trail: Trail) -> None:
    truncate_after_checkpoint(trail)
    trail.add_rows(3, actor="eve")  # (alice's rows again, in the same second, would be the same rows)
    with pytest.raises(AuditChainBroken, match="named by checkpoint 2 (is gone|has another hash)"):
        trail.checkpoints.write()
    result = trail.cli("checkpoint")
    assert result.returncode == EXIT_AUDIT and "refusing to sign" in result.stderr


def test_limits_rows_after_the_last_checkpoint_are_not_anchored(trail: Trail) -> None:
    """What docs/audit.md admits: the unanchored tail can be cut or extended unnoticed."""
    ids = trail.ids()
    with trail.db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id > ids[7]))  # rows 9-10 after checkpoint 2
    forge_append(trail.db, datetime.now(timezone.utc))  # dated now, after checkpoint 2
    report = trail.verify()
    assert report.ok and report.unanchored_rows == 1


def test_cli_checkpoint_and_keys(trail: Trail) -> None:
    result = trail.cli("checkpoint", "--json")
    assert result.returncode == 0, result.stderr
    cp = json.loads(result.stdout)
    assert (cp["seq"], cp["row_count"]) == (3, 10)
    assert Checkpoint.from_line(trail.file.read_text().splitlines()[-1]).seq == 3
    shown = trail.cli("show-key")
    assert shown.returncode == 0 and "BEGIN PUBLIC KEY" in shown.stdout
    pem = trail.inst.folder / "audit.pem"
    pem.write_text(shown.stdout)
    assert trail.cli("verify", "--public-key", str(pem)).returncode == 0
    again = trail.cli("init-key")
    assert again.returncode == 4 and "already exists" in again.stderr  # never overwritten
    protection = trail.checkpoints.key_backend.key_protection()  # type: ignore[attr-defined]
    assert protection["sensitive"] and protection["never_extractable"] and not protection["extractable"]


def test_worker_checkpoints_on_its_interval_and_at_sigterm(trail: Trail) -> None:
    cp = trail.checkpoints
    with trail.db.begin() as conn:  # start over: no checkpoint anywhere
        conn.execute(delete(audit_checkpoint))
    trail.file.unlink()
    assert cp.tick() is not None  # no checkpoint at all: due
    assert cp.tick() is None  # asked again at once: the local guard
    cp._next_local_check = 0.0  # noqa: SLF001 - skip the 30 s guard
    assert cp.tick() is None  # the database says: not due for an hour
    assert cp.due(now=datetime.now(timezone.utc) + timedelta(minutes=61))
    trail.add_rows(1)
    worker = subprocess.Popen([CLI, "--config", str(trail.inst.config_path), "worker", "--poll", "0.2"],
                              cwd=trail.inst.folder, env=os.environ.copy(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        trail.add_rows(1)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    report = trail.verify()
    assert report.ok, report.problems
    last = report.last_checkpoint
    assert last is not None and (last.seq, last.row_count) == (2, 12) and report.unanchored_rows == 0
