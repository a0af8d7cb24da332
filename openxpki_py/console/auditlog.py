"""Search the audit trail and export it (CSV, JSON Lines), for operators and auditors.

Filters use the indexed columns (actor, event, target, time); an export
streams in batches by id, so a year of events never sits in memory.  Each
exported row keeps ``prev_hash`` and ``entry_hash``: an auditor can check
the chain outside the server.  An export is itself audited.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine, RowMapping

from ..audit import append_audit
from ..audit.pending import chain_pending
from ..db.schema import audit_log
from ..errors import PolicyViolation
from . import policy
from .search import Page, paged

COLUMNS = ("id", "logged_at", "actor", "role_name", "event", "outcome", "target", "details", "prev_hash",
           "entry_hash")
FORMATS = {"csv": "text/csv", "jsonl": "application/jsonl"}
BATCH = 1000
FILTER_FIELDS = ("actor", "event", "target", "outcome", "since", "until")


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    event: str | None = None  # exact, or a prefix ending in "*" (cert.* )
    target: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> AuditFilter:
        def text(name: str) -> str | None:
            value = (args.get(name) or "").strip()
            return value[:256] or None
        return cls(actor=text("actor"), event=text("event"), target=text("target"), outcome=text("outcome"),
                   since=parse_when(text("since"), "since"), until=parse_when(text("until"), "until", end=True))

    def as_args(self) -> dict[str, str]:
        values = {"actor": self.actor, "event": self.event, "target": self.target, "outcome": self.outcome,
                  "since": self.since.isoformat() if self.since else None,
                  "until": self.until.isoformat() if self.until else None}
        return {k: v for k, v in values.items() if v}

    def where(self, query: Any) -> Any:
        a = audit_log.c
        if self.actor:
            query = query.where(a.actor == self.actor)
        if self.event and self.event.endswith("*"):
            prefix = self.event[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(a.event.like(prefix + "%", escape="\\"))
        elif self.event:
            query = query.where(a.event == self.event)
        if self.target:
            query = query.where(a.target == self.target)
        if self.outcome:
            query = query.where(a.outcome == self.outcome)
        if self.since:
            query = query.where(a.logged_at >= self.since)
        if self.until:
            query = query.where(a.logged_at <= self.until)
        return query


def parse_when(text: str | None, name: str, *, end: bool = False) -> datetime | None:
    """``2026-12-07`` (the whole day) or an ISO time; UTC unless it says otherwise."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise PolicyViolation(f"{name}: '{text[:40]}' is not a date (YYYY-MM-DD) or an ISO time",
                              code="audit.filter") from None
    if len(text) == 10 and end:
        value = datetime.combine(value.date(), time.max)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def search(db: Engine, flt: AuditFilter, number: int = 1) -> Page[RowMapping]:
    chain_pending(db, only_if_any=True)  # rows committed a moment ago are found too
    with db.connect() as conn:
        return paged(conn, flt.where(select(audit_log)).order_by(audit_log.c.id.desc()), number, 50)


def rows(db: Engine, flt: AuditFilter) -> Iterator[RowMapping]:
    """Every matching row, oldest first, read in batches (keyset on id)."""
    chain_pending(db, only_if_any=True)
    last = 0
    while True:
        with db.connect() as conn:
            batch = conn.execute(flt.where(select(audit_log)).where(audit_log.c.id > last)
                                 .order_by(audit_log.c.id).limit(BATCH)).mappings().all()
        yield from batch
        if len(batch) < BATCH:
            return
        last = int(batch[-1]["id"])


def _record(row: RowMapping) -> dict[str, Any]:
    return {c: (row[c].isoformat() if isinstance(row[c], datetime) else row[c]) for c in COLUMNS}


def _cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would run as a formula is quoted (actors and targets come from outside)."""
    text = "" if value is None else json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export(db: Engine, flt: AuditFilter, fmt: str, *, actor: str, role: str) -> Iterator[str]:
    """The rows as CSV (with a header) or JSON Lines; the export is audited before the first row."""
    if fmt not in FORMATS:
        raise PolicyViolation(f"unknown export format '{fmt[:20]}'; use csv or jsonl", code="audit.format")
    policy.require(db, "audit.export", actor=actor, role=role)
    with db.begin() as conn:
        append_audit(conn, actor=actor, role=role, event="audit.export", details={"format": fmt, **flt.as_args()})
    return _csv(db, flt) if fmt == "csv" else (json.dumps(_record(r), sort_keys=True) + "\n" for r in rows(db, flt))


def _csv(db: Engine, flt: AuditFilter) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows(db, flt):
        record = _record(row)
        writer.writerow([_cell(record[c]) for c in COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
