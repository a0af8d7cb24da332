"""The hand-off from the browser to the token agent.

The page shows a one-time *enrollment code* (100 random bits, single use,
minutes of life, bound to one workflow and its user).  The agent trades it
for a *bearer credential* (256 bits, bound to that workflow only, short
lived).  Only SHA-256 hashes of either are stored, so a copy of the
database does not let anyone enroll a card in someone's name.  Failed code
attempts are counted per client address and refused beyond a limit.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from ..audit import append_audit
from ..db.schema import agent_credential, enrollment_code, enrollment_failure
from ..errors import AuthError
from .policy import EnrollmentLimits

CODE_BYTES = 13  # 104 bits → 21 base32 characters, shown as 5 groups
TOKEN_BYTES = 32


class EnrollmentRefused(AuthError):
    """The enrollment code or the agent's credential was refused (not valid, expired)."""

    code = "enroll.refused"


class EnrollmentWrongUser(EnrollmentRefused):
    """The code belongs to someone other than the user the web server authenticated."""

    code = "enroll.wrong_user"


class EnrollmentCodeUsed(EnrollmentRefused):
    """The code was traded for a credential before: codes work once."""

    code = "enroll.code_used"


class EnrollmentRateLimited(EnrollmentRefused):
    """Too many wrong codes from one address; ``retry_after`` says how long to wait (seconds)."""

    code = "enroll.rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CredentialRefused(EnrollmentRefused):
    """The agent's bearer credential is missing, unknown or no longer valid."""

    code = "auth.token_invalid"


@dataclass(frozen=True)
class AgentGrant:
    access_token: str
    workflow_id: int
    login: str
    expires_at: datetime


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def normalize_code(code: str) -> str:
    """Codes are read aloud and typed: ignore case, spaces and dashes."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def format_code(raw: str) -> str:
    return "-".join(raw[i:i + 5] for i in range(0, len(raw), 5))


def revoke_workflow_access(conn: Connection, workflow_id: int, *, now: datetime, credentials: bool = True) -> None:
    """End every unused code and (unless told not to) every agent credential of the workflow.

    One agent at a time: a new code, a new agent or a rejected card leaves no
    older credential that could still report a card.
    """
    conn.execute(
        enrollment_code.update()
        .where(enrollment_code.c.workflow_id == workflow_id, enrollment_code.c.used_at.is_(None),
               enrollment_code.c.expires_at > now)
        .values(expires_at=now)
    )
    if credentials:
        conn.execute(
            agent_credential.update()
            .where(agent_credential.c.workflow_id == workflow_id, agent_credential.c.expires_at > now)
            .values(expires_at=now)
        )


def new_enrollment_code(conn: Connection, *, workflow_id: int, login: str, limits: EnrollmentLimits,
                        now: datetime) -> str:
    """A fresh code for the workflow; earlier codes and agent credentials of it stop working."""
    revoke_workflow_access(conn, workflow_id, now=now)
    raw = base64.b32encode(secrets.token_bytes(CODE_BYTES)).decode().rstrip("=")
    conn.execute(enrollment_code.insert(), {
        "code_hash": _hash(raw), "workflow_id": workflow_id, "login": login, "created_at": now,
        "expires_at": now + timedelta(seconds=limits.code_lifetime),
    })
    append_audit(conn, actor=login, event="enroll.code", target=f"workflow:{workflow_id}")
    return format_code(raw)


def _rate_limited(conn: Connection, client: str, limits: EnrollmentLimits, now: datetime) -> None:
    since = now - timedelta(seconds=limits.failure_window)  # older rows: housekeeping deletes them
    failures = conn.execute(
        select(func.count()).select_from(enrollment_failure)
        .where(enrollment_failure.c.client == client, enrollment_failure.c.failed_at >= since)
    ).scalar_one()
    if failures >= limits.max_failures:
        raise EnrollmentRateLimited(
            f"too many wrong enrollment codes from this address; wait {limits.failure_window // 60} minutes",
            retry_after=limits.failure_window,
        )


def redeem_code(conn: Connection, code: str, *, client: str, limits: EnrollmentLimits, now: datetime,
                sso_login: str | None = None) -> AgentGrant:
    """Trade a code for a bearer credential.  A wrong code counts towards the rate limit.

    Runs in its own transaction: the caller commits failures too (they are
    the rate limit's memory), so refusals are recorded before raising.
    """
    _rate_limited(conn, client, limits, now)
    row = conn.execute(
        select(enrollment_code).where(enrollment_code.c.code_hash == _hash(normalize_code(code)))
    ).mappings().first()
    refusal: EnrollmentRefused | None = None
    if row is None:
        refusal = EnrollmentRefused("this enrollment code is not valid; copy it again from the web page",
                                    code="enroll.code_invalid")
    elif sso_login is not None and sso_login != row["login"]:
        refusal = EnrollmentWrongUser("this enrollment code belongs to another user")
    elif row["used_at"] is not None:
        refusal = EnrollmentCodeUsed(
            "this enrollment code was already used; rerun the agent with its saved session, or get a new code "
            "from the web page")
    elif row["expires_at"] <= now:
        refusal = EnrollmentRefused("this enrollment code has expired; get a new one from the web page",
                                    code="enroll.code_expired")
    if refusal is not None:
        if refusal.code == "enroll.code_invalid":
            # Only guesses count: a rerun agent's "used" or "expired" is no
            # attack, and counting it would lock out a whole NAT'ed office.
            conn.execute(enrollment_failure.insert(), {"client": client[:64], "failed_at": now})
        append_audit(conn, actor=sso_login or "agent", event="enroll.redeem", outcome="refused",
                     target=f"workflow:{row['workflow_id']}" if row is not None else None,
                     details={"code": refusal.code, "client": client})
        raise refusal
    assert row is not None
    claimed = conn.execute(
        enrollment_code.update()
        .where(enrollment_code.c.id == row["id"], enrollment_code.c.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if claimed != 1:  # a concurrent redeem won
        raise EnrollmentCodeUsed("this enrollment code was already used")
    conn.execute(  # the newest agent is the only one: older credentials of this workflow end
        agent_credential.update()
        .where(agent_credential.c.workflow_id == row["workflow_id"], agent_credential.c.expires_at > now)
        .values(expires_at=now)
    )
    access_token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now + timedelta(seconds=limits.agent_token_lifetime)
    conn.execute(agent_credential.insert(), {
        "token_hash": _hash(access_token), "code_id": row["id"], "workflow_id": row["workflow_id"],
        "login": row["login"], "created_at": now, "expires_at": expires,
    })
    append_audit(conn, actor=row["login"], event="enroll.redeem", target=f"workflow:{row['workflow_id']}",
                 details={"client": client})
    return AgentGrant(access_token, int(row["workflow_id"]), row["login"], expires)


def check_credential(conn: Connection, access_token: str, *, now: datetime) -> tuple[int, str]:
    """(workflow id, login) the bearer credential was issued for."""
    row = conn.execute(
        select(agent_credential).where(agent_credential.c.token_hash == _hash(access_token))
    ).mappings().first()
    if row is None:
        raise CredentialRefused("the agent's session is not valid; start again with a new code from the web page")
    if row["expires_at"] <= now:
        raise CredentialRefused(
            "the agent's session has ended (it expired, or a newer code or agent replaced it); get a new code "
            "from the web page", code="auth.token_expired")
    return int(row["workflow_id"]), row["login"]


def purge_expired(conn: Connection, *, now: datetime, keep: timedelta = timedelta(days=1)) -> int:
    """Forget codes and credentials that can no longer be used, and old failures.

    Kept for ``keep`` after expiry so that a late agent still gets a precise
    refusal ("expired", "used") rather than "not valid".
    """
    horizon = now - keep
    removed = conn.execute(delete(agent_credential).where(agent_credential.c.expires_at < horizon)).rowcount or 0
    still_referenced = select(agent_credential.c.code_id)
    removed += conn.execute(
        delete(enrollment_code).where(enrollment_code.c.expires_at < horizon,
                                      enrollment_code.c.id.not_in(still_referenced))
    ).rowcount or 0
    removed += conn.execute(delete(enrollment_failure).where(enrollment_failure.c.failed_at < horizon)).rowcount or 0
    return removed
