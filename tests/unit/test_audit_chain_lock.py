"""The audit chain's table lock as each database is asked for it (the statements; Oracle cannot run here).

A request chains its queued audit rows after its work and must not wait
behind a checkpoint for long (``REQUEST_CHAIN_WAIT_SECONDS``).  On Oracle
the lock waited without a limit: a checkpoint waiting for the HSM held
every request of every node.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from openxpki_py.audit.chain import lock_chain


class Recorder:
    """The part of a Connection that ``lock_chain`` uses: a dialect name and ``exec_driver_sql``."""

    def __init__(self, dialect: str) -> None:
        self.dialect = SimpleNamespace(name=dialect)
        self.sent: list[str] = []

    def exec_driver_sql(self, statement: str) -> None:
        self.sent.append(statement)


@pytest.mark.parametrize(("dialect", "wait", "expected"), [
    ("oracle", None, ["LOCK TABLE audit_log IN EXCLUSIVE MODE"]),
    ("oracle", 2, ["LOCK TABLE audit_log IN EXCLUSIVE MODE WAIT 2"]),
    ("oracle", 0.2, ["LOCK TABLE audit_log IN EXCLUSIVE MODE WAIT 1"]),  # WAIT takes whole seconds, 0 is NOWAIT
    ("postgresql", 2, ["LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE"]),  # lock_timeout set by the caller
    ("sqlite", 2, []),  # every write transaction is BEGIN IMMEDIATE
])
def test_lock_statement(dialect: str, wait: float | None, expected: list[str]) -> None:
    conn: Any = Recorder(dialect)
    lock_chain(conn, wait_seconds=wait)
    assert conn.sent == expected
