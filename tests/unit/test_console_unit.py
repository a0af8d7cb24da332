"""The console's pure logic: serials from URLs, secret context keys, audit filters and CSV cells, card transitions."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from openxpki_py.console import auditlog, cards, stuck
from openxpki_py.console.lifecycle import shipped_lifecycle
from openxpki_py.console.revocation import clean_comment
from openxpki_py.db.schema import audit_log
from openxpki_py.errors import NotFound, PolicyViolation
from openxpki_py.web.console.common import checked_serial
from openxpki_py.workflow.definition import ActionSpec, FieldSpec, WorkflowDefinition
from openxpki_py.workflow.view import WorkflowView


@pytest.mark.parametrize("text,expected", [("3F0C", "3f0c"), ("0x3f0c", "3f0c"), ("3f:0c", "3f0c"),
                                           ("003f0c", "3f0c")])
def test_serial_spellings(text: str, expected: str) -> None:
    assert checked_serial(text) == expected


@pytest.mark.parametrize("text", ["", "0", "zz", "3f\x00", "1" * 41, "3f 0c"])
def test_serial_garbage_is_not_found(text: str) -> None:
    with pytest.raises(NotFound):
        checked_serial(text)


def test_comment_is_one_bounded_line() -> None:
    assert clean_comment("  lost \n on the\ttrain ") == "lost on the train"
    assert clean_comment("   ") is None
    for bad in ("x" * 1001, "a\x00b", "\ud800", "bell\x07"):
        with pytest.raises(PolicyViolation):
            clean_comment(bad)


def _view(context: dict[str, Any], fields: tuple[FieldSpec, ...] = ()) -> WorkflowView:
    now = datetime.now(timezone.utc)
    definition = WorkflowDefinition(
        wf_type="t", description="", source="test", initial_state="A", start_roles=frozenset(),
        start_fields=(), states={},
        actions={"set": ActionSpec(name="set", label="", description="", manual=True, roles=frozenset(),
                                   fields=fields, activity=None, next=())})
    return WorkflowView(id=1, wf_type="t", state="A", proc_state="exception", version=1, creator="x", role="User",
                        parent_id=None, wake_at=None, retry_count=0, last_error=None, created_at=now,
                        updated_at=now, context=context, definition=definition)


def test_secret_context_keys_are_hidden_at_any_depth() -> None:
    view = _view({"card_pin": "1234", "SO_PIN": "5678", "enrollment_code": "ABCDE", "unlock": "declared secret",
                  "tasks": [{"serial": "C1", "admin_key": "00ff", "nested": {"password": "p"}}],
                  "token_serial": "C1", "pinned": "shown", "key": "RSA 2048"},
                 fields=(FieldSpec(name="unlock", type="secret", label="unlock"),))
    shown = stuck.shown_context(view)
    assert {k for k, v in shown.items() if v == stuck.HIDDEN} == {"card_pin", "SO_PIN", "enrollment_code", "unlock"}
    assert shown["tasks"] == [{"serial": "C1", "admin_key": stuck.HIDDEN, "nested": {"password": stuck.HIDDEN}}]
    assert (shown["token_serial"], shown["pinned"], shown["key"]) == ("C1", "shown", "RSA 2048")


def test_audit_filter_dates_and_prefix() -> None:
    flt = auditlog.AuditFilter.from_args({"since": "2026-12-01", "until": "2026-12-07", "event": "cert_x%*"})
    assert flt.since == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert flt.until is not None and (flt.until.hour, flt.until.minute) == (23, 59)
    sql = str(flt.where(select(audit_log)).compile(dialect=sqlite.dialect(),
                                                                     compile_kwargs={"literal_binds": True}))
    assert "LIKE 'cert\\_x\\%%' ESCAPE" in sql  # the operator's % and _ are literal, only * is a wildcard
    with pytest.raises(PolicyViolation) as bad:
        auditlog.AuditFilter.from_args({"until": "last week"})
    assert bad.value.code == "audit.filter"


@pytest.mark.parametrize("value,cell", [("=1+1", "'=1+1"), ("+x", "'+x"), ("-x", "'-x"), ("@x", "'@x"),
                                        ("alice", "alice"), (None, ""), ({"b": 1, "a": 2}, '{"a": 2, "b": 1}')])
def test_csv_cells_never_formulas(value: Any, cell: str) -> None:
    assert auditlog._cell(value) == cell


def test_card_transitions_by_role_and_state() -> None:
    life = shipped_lifecycle()

    def names(status: str, role: str, kind: str = "permanent", **kw: bool) -> list[str]:
        return [t.name for t in cards.available(life, {"status": status, "kind": kind}, role, **kw)]

    assert names("active", "RA Operator") == ["suspend", "forgotten", "lost", "damaged", "terminate"]
    assert names("suspended", "CA Operator") == ["resume", "lost", "damaged", "terminate"]
    assert names("forgotten", "RA Operator") == ["returned", "lost", "terminate"]
    assert names("active", "RA Operator", "temporary") == ["suspend", "lost", "damaged", "retire", "terminate"]
    assert names("revoked", "RA Operator") == names("retired", "RA Operator", "temporary") == []
    assert names("active", "User", own_card=True) == ["lost"]
    assert names("active", "User", own_card=False) == []
    # Every state is one the registry knows, and only active cards are personalized.
    from openxpki_py.personalization.tokens import STATUSES, USABLE
    assert set(life.states) == set(STATUSES) and USABLE == "active" and life.stand_in == {"forgotten"}
