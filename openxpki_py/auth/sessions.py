"""Server-side web sessions in the SQL store.

The browser holds only a random id (256 bits); the table keeps its SHA-256,
so a leaked database dump holds no usable cookie.  A session is bound to
the SSO login it was created for and ends when another login presents its
cookie, when it was idle too long, or when it reached its absolute age.
Granting a role gives the session a new id and CSRF token (no fixation).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.engine import Connection

from ..audit import append_audit
from ..db.schema import web_session
from .identity import Identity

# last_seen is written at most this often: a write per request would make
# every page view a write transaction.
TOUCH_INTERVAL = timedelta(seconds=30)


# Every browser request runs it: built once (issue #15).
_SESSION = select(web_session).where(web_session.c.id_hash == bindparam("b_hash"))


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class WebSession:
    """One row of ``web_session``; ``cookie`` is set when the browser needs a new id."""

    id_hash: str
    login: str
    role: str | None
    csrf_token: str
    created_at: datetime
    last_seen: datetime
    data: dict[str, Any] = field(default_factory=dict)
    cookie: str | None = None

    def csrf_valid(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token.encode(), str(token).encode())


class SessionStore:
    """Create, find and end sessions; every method works in the caller's transaction."""

    def __init__(self, *, idle_timeout: timedelta, absolute_timeout: timedelta,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.clock = clock

    def find(self, conn: Connection, cookie: str | None, identity: Identity) -> WebSession | None:
        """The cookie's session if it is still valid for this user; an invalid one is ended.

        None: the caller admits the user (a directory lookup, outside any
        transaction) and then :meth:`create` s a session.
        """
        if not cookie:
            return None
        found = self._load(conn, cookie)
        if found is None:
            return None
        reason = self._end_reason(found, identity)
        if reason is None:
            self._touch(conn, found)
            return found
        self.end(conn, found, actor=identity.login, reason=reason)
        return None

    def current(self, conn: Connection, cookie: str | None, identity: Identity) -> tuple[WebSession | None, bool]:
        """The cookie's session as read, and whether :meth:`find` must run (it would end or touch it).

        Most requests change nothing: they read the session on a read-only
        connection and take no write lock (issue #15).
        """
        if not cookie:
            return None, False
        found = self._load(conn, cookie)
        if found is None:
            return None, False
        unchanged = self._end_reason(found, identity) is None and self.clock() - found.last_seen < TOUCH_INTERVAL
        return found, not unchanged

    def create(self, conn: Connection, identity: Identity) -> WebSession:
        """A new session for an admitted user (its ``cookie`` is to be set)."""
        cookie, now = new_token(), self.clock()
        s = WebSession(id_hash=_hash(cookie), login=identity.login, role=None, csrf_token=new_token(),
                       created_at=now, last_seen=now, cookie=cookie)
        conn.execute(web_session.insert().values(
            id_hash=s.id_hash, login=s.login, role_name=None, csrf_token=s.csrf_token,
            data=s.data or None, created_at=now, last_seen=now))
        return s

    def _end_reason(self, s: WebSession, identity: Identity) -> str | None:
        now = self.clock()
        if not hmac.compare_digest(s.login.encode(), identity.login.encode()):
            return "sso_user_changed"
        if now - s.last_seen > self.idle_timeout:
            return "idle_timeout"
        if now - s.created_at > self.absolute_timeout:
            return "absolute_timeout"
        return None

    def _load(self, conn: Connection, cookie: str) -> WebSession | None:
        row = conn.execute(_SESSION, {"b_hash": _hash(cookie)}).mappings().first()
        if row is None:
            return None
        return WebSession(
            id_hash=row["id_hash"], login=row["login"], role=row["role_name"],
            csrf_token=row["csrf_token"], created_at=row["created_at"],
            last_seen=row["last_seen"], data=dict(row["data"] or {}),
        )

    def _touch(self, conn: Connection, s: WebSession) -> None:
        now = self.clock()
        if now - s.last_seen >= TOUCH_INTERVAL:
            conn.execute(update(web_session).where(web_session.c.id_hash == s.id_hash).values(last_seen=now))
            s.last_seen = now

    def flash(self, conn: Connection, s: WebSession, message: str) -> None:
        """Keep ``message`` for the next page this session shows (a status after a redirect).

        Status texts travel in the server-side session, never in the URL: a
        link cannot make an operator's page say what its author wants.
        """
        s.data["flash"] = message
        conn.execute(update(web_session).where(web_session.c.id_hash == s.id_hash).values(data=s.data))

    def take_flash(self, conn: Connection, s: WebSession) -> str | None:
        """The kept message, once; None if there is none."""
        message = s.data.pop("flash", None)
        if message is not None:
            conn.execute(update(web_session).where(web_session.c.id_hash == s.id_hash).values(data=s.data or None))
        return str(message) if message is not None else None

    def grant_role(self, conn: Connection, s: WebSession, role: str) -> None:
        """Give ``s`` the role under a fresh id and CSRF token (``s.cookie`` is the new id)."""
        cookie, now = new_token(), self.clock()
        conn.execute(delete(web_session).where(web_session.c.id_hash == s.id_hash))
        s.id_hash, s.cookie, s.role, s.csrf_token, s.last_seen = _hash(cookie), cookie, role, new_token(), now
        conn.execute(web_session.insert().values(
            id_hash=s.id_hash, login=s.login, role_name=role, csrf_token=s.csrf_token,
            data=s.data or None, created_at=s.created_at, last_seen=now))

    def end(self, conn: Connection, s: WebSession, *, actor: str, reason: str) -> None:
        conn.execute(delete(web_session).where(web_session.c.id_hash == s.id_hash))
        # Ending a session that never held a role is not worth an audit row.
        if s.role is not None or reason == "sso_user_changed":
            append_audit(conn, actor=actor, event="auth.session.end", role=s.role,
                         target=s.login, details={"reason": reason})

    def purge_expired(self, conn: Connection) -> int:
        """Delete expired sessions (run now and then, e.g. by the worker)."""
        now = self.clock()
        expired = or_(web_session.c.last_seen < now - self.idle_timeout,
                      web_session.c.created_at < now - self.absolute_timeout)
        return conn.execute(delete(web_session).where(expired)).rowcount or 0
