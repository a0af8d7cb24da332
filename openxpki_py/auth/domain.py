"""What auth gives the worker's housekeeping: the purge of expired web sessions.

Auth has no workflows; it is a domain only so that housekeeping stays
generic (it runs whatever purges the domains bring).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ..workflow.domain import WorkflowDomain
from .sessions import SessionStore


def purge_web_sessions(conn: Connection, services: Any, now: datetime) -> int:
    """Sessions idle or older than the configured timeouts (the store's own clock decides)."""
    web = services.config.web.session
    sessions = SessionStore(idle_timeout=web.idle_timeout, absolute_timeout=web.absolute_timeout)
    return sessions.purge_expired(conn)


DOMAIN = WorkflowDomain(name="auth", purges=(purge_web_sessions,))
