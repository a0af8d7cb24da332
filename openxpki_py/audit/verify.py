"""Checking the audit trail: the hash chain, the signed checkpoints, their outside copies.

:func:`verify_chain` returns a :class:`ChainReport` (for ``openxpki-py audit
verify`` and a future web page alike); it never raises for tampering, it
reports it.  What it proves and what it cannot is in docs/audit.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection

from ..db.schema import audit_log
from .chain import GENESIS, defers_chaining, entry_hash, hashed_part
from .checkpoint import Checkpoint, PublicKey, key_id_of, load_checkpoints, signature_valid
from .external import read_file
from .pending import queued_backlog

_APPEND_GRACE = timedelta(seconds=10)


@dataclass(frozen=True)
class AuditProblem:
    """One thing that is wrong; ``code`` is stable, ``message`` says it for people."""

    code: str
    message: str
    row_id: int | None = None
    checkpoint: int | None = None

    def line(self) -> str:
        where = f"row {self.row_id}" if self.row_id is not None else (
            f"checkpoint {self.checkpoint}" if self.checkpoint is not None else "audit trail")
        return f"{where}: {self.message} [{self.code}]"

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "row_id": self.row_id, "checkpoint": self.checkpoint}


@dataclass
class ChainReport:
    rows: int = 0
    head_id: int = 0
    head_hash: str = GENESIS
    checkpoints: list[Checkpoint] = field(default_factory=list)  # verified ones, by seq
    problems: list[AuditProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    queued_rows: int = 0  # committed in audit_pending, not chained yet
    queued_oldest: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> AuditProblem | None:
        """The problem at the lowest row (problems without a row come last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.row_id is None, p.row_id or 0, p.checkpoint or 0))

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def unanchored_rows(self) -> int:
        """Rows newer than the newest good checkpoint: nothing outside the database covers them."""
        last = self.last_checkpoint
        return self.rows - (last.row_count if last else 0)

    def as_json(self) -> dict[str, Any]:
        last = self.last_checkpoint
        first = self.first_problem
        return {
            "ok": self.ok, "rows": self.rows, "head": {"id": self.head_id, "entry_hash": self.head_hash},
            "checkpoints": len(self.checkpoints), "last_checkpoint": last.as_json() if last else None,
            "unanchored_rows": self.unanchored_rows,
            "queued": {"rows": self.queued_rows,
                       "oldest": self.queued_oldest.isoformat() if self.queued_oldest else None},
            "first_problem": first.as_json() if first else None,
            "problems": [p.as_json() for p in self.problems], "warnings": list(self.warnings),
        }


def verify_chain(conn: Connection, *, public_key: PublicKey | None = None,
                 checkpoint_files: Sequence[Path] = (), node: str | None = None,
                 clock_tolerance: timedelta = timedelta(seconds=60)) -> ChainReport:
    """Check the whole audit trail.

    ``public_key`` (the audit key's) checks the checkpoint signatures;
    ``checkpoint_files`` are the copies outside the database, and ``node``
    names the host whose file must hold every checkpoint it wrote.
    """
    report = ChainReport()
    # Files first: a checkpoint committed while we read is then at worst in
    # the database only (and too new to be missed in the file, see _merge),
    # never in a file only, which would look like a deletion.
    external = _external_checkpoints(checkpoint_files, report)
    files_read_at = datetime.now(timezone.utc)
    stored = _stored_checkpoints(conn, report)
    merged = _merge(stored, external, checkpoint_files, node, files_read_at, report)
    trusted = _check_signatures(merged, public_key, report)
    positions = _walk_chain(conn, trusted, clock_tolerance, report)
    _check_against_chain(trusted, positions, report)
    _check_queued(conn, clock_tolerance, report)
    if not merged:
        report.warnings.append("no checkpoint: nothing outside the database anchors the chain "
                               "(configure audit.checkpoint and run 'openxpki-py audit checkpoint')")
    return report


def _check_queued(conn: Connection, clock_tolerance: timedelta, report: ChainReport) -> None:
    """Committed audit rows not chained yet (PostgreSQL/Oracle): normal for milliseconds, not for longer.

    Verify only reads; ``openxpki-py audit verify`` chains the queue before it.
    A row older than the clock tolerance means its process died between
    commit and chaining and no worker has run since, or it was inserted by hand.
    """
    if not defers_chaining(conn):
        return
    if not inspect(conn).has_table("audit_pending"):
        report.problems.append(AuditProblem("queue.table", "the audit_pending table is missing: audited "
                                            "actions cannot commit (create it, see docs/operators.md)"))
        return
    report.queued_rows, report.queued_oldest = queued_backlog(conn)
    if not report.queued_rows or report.queued_oldest is None:
        return
    text = (f"{report.queued_rows} committed audit row(s) are not chained yet, the oldest dated "
            f"{report.queued_oldest:%Y-%m-%d %H:%M:%S} UTC")
    if report.queued_oldest < datetime.now(timezone.utc) - clock_tolerance:
        report.problems.append(AuditProblem(
            "queue.stale", text + ": their process stopped between commit and chaining and no worker "
            "chained them since (is one running?), or they were inserted by hand"))
    else:
        report.warnings.append(text + " (being chained now)")


# --- checkpoints from both places --------------------------------------------------


def _stored_checkpoints(conn: Connection, report: ChainReport) -> list[Checkpoint]:
    if not inspect(conn).has_table("audit_checkpoint"):
        report.problems.append(AuditProblem("checkpoint.table", "the audit_checkpoint table is missing "
                                            "(dropped?); run 'openxpki-py db init' only after investigating"))
        return []
    return load_checkpoints(conn)


def _external_checkpoints(files: Sequence[Path], report: ChainReport) -> dict[Path, list[Checkpoint]]:
    found: dict[Path, list[Checkpoint]] = {}
    for path in files:
        found[path], bad = read_file(path)
        for b in bad:
            report.problems.append(AuditProblem("checkpoint.file_line",
                                                f"{b.path} line {b.line_no} is not a checkpoint: {b.reason}"))
    return found


def _merge(stored: list[Checkpoint], external: dict[Path, list[Checkpoint]], files: Sequence[Path],
           node: str | None, files_read_at: datetime, report: ChainReport) -> dict[int, list[Checkpoint]]:
    """Every version of each checkpoint, by seq; disagreements and deletions become problems."""
    merged: dict[int, list[Checkpoint]] = {cp.seq: [cp] for cp in stored}
    for path, records in external.items():
        for cp in records:
            versions = merged.setdefault(cp.seq, [])
            if not versions:
                report.problems.append(AuditProblem(
                    "checkpoint.missing_in_db", f"is in {path} but not in the database: checkpoints "
                    f"were deleted (it covered rows up to {cp.row_id})", checkpoint=cp.seq))
            elif cp not in versions:
                report.problems.append(AuditProblem(
                    "checkpoint.differs", f"differs between the database and {path}", checkpoint=cp.seq))
            if cp not in versions:
                versions.append(cp)  # the copy may be the genuine one: the signature decides
    if node is not None and files:
        _missing_in_files(stored, external, files, node, files_read_at, report)
    elif stored:
        report.warnings.append("checkpoints were not compared with a copy outside the database "
                               "(set audit.checkpoint.file or give --checkpoint-file)")
    return dict(sorted(merged.items()))


def _missing_in_files(stored: list[Checkpoint], external: dict[Path, list[Checkpoint]], files: Sequence[Path],
                      node: str, files_read_at: datetime, report: ChainReport) -> None:
    """Checkpoints this node wrote must be in its file."""
    in_files = {cp.seq for records in external.values() for cp in records if cp.node == node}
    newest_in_files = max(in_files, default=0)
    for cp in stored:
        if cp.node != node or cp.seq in in_files:
            continue
        # The line follows the commit by milliseconds: the newest checkpoints
        # may not be appended yet.  One older than a line that is there is missing.
        if cp.seq > newest_in_files and cp.created_at >= files_read_at - _APPEND_GRACE:
            continue
        report.problems.append(AuditProblem(
            "checkpoint.missing_in_file", f"was written by this node ({node}) but is in none of "
            f"{', '.join(map(str, files))} (lines deleted, or the append failed after the commit)",
            checkpoint=cp.seq))


def _check_signatures(merged: dict[int, list[Checkpoint]], public_key: PublicKey | None,
                      report: ChainReport) -> list[Checkpoint]:
    """The checkpoints whose signature and place in the checkpoint chain are good, by seq."""
    if public_key is None and merged:
        report.warnings.append("checkpoint signatures were not checked: no audit key "
                               "(configure audit.checkpoint.key or give --public-key)")
    trusted: list[Checkpoint] = []
    prev_digest, prev_seq = GENESIS, 0
    for seq, versions in merged.items():
        good = [cp for cp in versions if _signed_by(cp, public_key, report)]
        cp = good[0] if good else versions[0]
        if seq != prev_seq + 1:
            report.problems.append(AuditProblem(
                "checkpoint.sequence", f"checkpoints {prev_seq + 1}..{seq - 1} are missing everywhere",
                checkpoint=seq))
        elif cp.prev_checkpoint != prev_digest:
            report.problems.append(AuditProblem(
                "checkpoint.sequence", f"does not follow checkpoint {prev_seq} (prev_checkpoint differs)",
                checkpoint=seq))
        prev_digest, prev_seq = cp.digest(), seq
        if good:
            trusted.append(cp)
    return trusted


def _signed_by(cp: Checkpoint, public_key: PublicKey | None, report: ChainReport) -> bool:
    if public_key is None:
        return True  # unchecked, as the report's warning says
    if cp.key_id != key_id_of(public_key):
        report.problems.append(AuditProblem(
            "checkpoint.key", f"was signed by another key ({cp.key_id[:16]}…), not the audit key",
            checkpoint=cp.seq))
        return False
    if not signature_valid(public_key, cp.payload(), cp.signature):
        report.problems.append(AuditProblem(
            "checkpoint.signature", "its signature is not valid: the checkpoint was altered or forged",
            checkpoint=cp.seq))
        return False
    return True


# --- the chain itself ---------------------------------------------------------------


def _walk_chain(conn: Connection, checkpoints: list[Checkpoint], clock_tolerance: timedelta,
                report: ChainReport) -> dict[int, tuple[str, int]]:
    """Recompute every link; return {row id: (stored entry_hash, position)} for checkpointed rows."""
    wanted = {cp.row_id for cp in checkpoints}
    by_row = sorted(checkpoints, key=lambda cp: cp.row_id)
    positions: dict[int, tuple[str, int]] = {}
    prev, prev_id, count, next_cp = GENESIS, 0, 0, 0
    before: Checkpoint | None = None  # newest checkpoint whose row precedes the current row
    for r in conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings():
        row_id = int(r["id"])
        count += 1
        while next_cp < len(by_row) and by_row[next_cp].row_id < row_id:
            before, next_cp = by_row[next_cp], next_cp + 1
        if r["prev_hash"] != prev:
            what = f"the entry_hash of row {prev_id}" if prev_id else "the start of the chain"
            report.problems.append(AuditProblem(
                "chain.link", f"prev_hash does not match {what}: a row between them was deleted, "
                "or one of them changed", row_id=row_id))
        if r["entry_hash"] != entry_hash(r["prev_hash"], hashed_part(r)):
            report.problems.append(AuditProblem(
                "chain.content", "its content does not match its entry_hash: the row was changed",
                row_id=row_id))
        # A row appended after a checkpoint was signed cannot be dated before it (appends and
        # checkpoints hold the same lock); only clock skew between nodes excuses a little.
        if before is not None and r["logged_at"] < before.created_at - clock_tolerance:
            report.problems.append(AuditProblem(
                "chain.backdated", f"dated {r['logged_at']:%Y-%m-%d %H:%M:%S} UTC, before checkpoint "
                f"{before.seq} ({before.created_at:%Y-%m-%d %H:%M:%S} UTC) that does not cover it: "
                "the row was inserted later (forged)", row_id=row_id))
        if row_id in wanted:
            positions[row_id] = (str(r["entry_hash"]), count)
        prev, prev_id = str(r["entry_hash"]), row_id
    report.rows, report.head_id, report.head_hash = count, prev_id, prev
    return positions


def _check_against_chain(checkpoints: Iterable[Checkpoint], positions: dict[int, tuple[str, int]],
                         report: ChainReport) -> None:
    previous: Checkpoint | None = None
    for cp in checkpoints:
        since = f"after row {previous.row_id} (checkpoint {previous.seq})" if previous else "from the start"
        good = True
        if cp.row_id == 0:
            good = cp.row_count == 0
        elif cp.row_id not in positions:
            good = False
            report.problems.append(AuditProblem(
                "checkpoint.row_missing", f"is gone, though checkpoint {cp.seq} signed it at "
                f"{cp.created_at:%Y-%m-%d %H:%M:%S} UTC: the chain was truncated or the row deleted",
                row_id=cp.row_id, checkpoint=cp.seq))
        else:
            stored_hash, position = positions[cp.row_id]
            if stored_hash != cp.entry_hash:
                good = False
                report.problems.append(AuditProblem(
                    "checkpoint.hash", f"its chain hash differs from the one checkpoint {cp.seq} signed: a row "
                    f"{since} up to this one was changed and the chain re-hashed",
                    row_id=cp.row_id, checkpoint=cp.seq))
            if position != cp.row_count:
                good = False
                report.problems.append(AuditProblem(
                    "checkpoint.count", f"is row number {position} of the chain, checkpoint {cp.seq} signed "
                    f"{cp.row_count}: rows {since} up to this one were "
                    f"{'deleted' if position < cp.row_count else 'inserted'}",
                    row_id=cp.row_id, checkpoint=cp.seq))
        if good:
            report.checkpoints.append(cp)
            previous = cp
