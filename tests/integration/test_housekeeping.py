"""Expired sessions, enrollment codes and agent credentials are deleted; live ones stay."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from openxpki_py_token.pairing import new_agent_key, public_key_text
from sqlalchemy import func, select

from openxpki_py.db.schema import agent_credential, enrollment_code, enrollment_failure, web_session
from openxpki_py.housekeeping import purge_expired
from openxpki_py.personalization.enrollment import new_enrollment_code, redeem_code


def counts(db: Any) -> dict[str, int]:
    with db.connect() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (web_session, enrollment_code, agent_credential, enrollment_failure)}


def test_purge_expired(make_instance: Callable[..., Any], db_engine: Any) -> None:
    inst = make_instance(db_engine, init_ca=False)
    services, limits = inst.services, inst.config.personalization.enrollment
    engine = services.workflows
    wf = engine.start("smartcard_personalization", actor="alice", role="User")
    now = datetime.now(timezone.utc)
    long_ago = now - timedelta(days=3)
    with services.db.begin() as conn:
        old_code = new_enrollment_code(conn, workflow_id=wf.id, login="alice", limits=limits, now=long_ago)
        redeem_code(conn, old_code, agent_key=public_key_text(new_agent_key()), client="127.0.0.1", limits=limits,
                    now=long_ago)  # old credential
        new_enrollment_code(conn, workflow_id=wf.id, login="alice", limits=limits, now=now)  # live code
        conn.execute(enrollment_failure.insert(), [{"client": "10.0.0.1", "failed_at": long_ago},
                                                   {"client": "10.0.0.1", "failed_at": now}])
        conn.execute(web_session.insert(), [
            {"id_hash": "a" * 64, "login": "alice", "csrf_token": "x", "created_at": long_ago, "last_seen": long_ago},
            {"id_hash": "b" * 64, "login": "bob", "csrf_token": "y", "created_at": now, "last_seen": now},
        ])
    assert counts(services.db) == {"web_session": 2, "enrollment_code": 2, "agent_credential": 1,
                                   "enrollment_failure": 2}
    assert purge_expired(services) == 4
    assert counts(services.db) == {"web_session": 1, "enrollment_code": 1, "agent_credential": 0,
                                   "enrollment_failure": 1}
    assert purge_expired(services) == 0
