"""Deleting what has expired: web sessions, enrollment codes, agent credentials.

Run by ``openxpki-py worker`` every few minutes; any number of workers may
run it at once (plain conditional deletes).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from .auth.sessions import SessionStore
from .personalization import enrollment

log = logging.getLogger(__name__)


def purge_expired(services: Any) -> int:
    web = services.config.web.session
    sessions = SessionStore(idle_timeout=web.idle_timeout, absolute_timeout=web.absolute_timeout)
    with services.db.begin() as conn:
        removed = sessions.purge_expired(conn)
        removed += enrollment.purge_expired(conn, now=datetime.now(timezone.utc))
    if removed:
        log.info("housekeeping: %d expired session(s), code(s) and credential(s) removed", removed)
    return removed
