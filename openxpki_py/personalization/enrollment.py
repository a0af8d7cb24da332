"""The hand-off from the browser to the token agent.

The page shows a one-time *enrollment code* (104 random bits, single use,
minutes of life, bound to one workflow and its user).  The agent trades it,
with the public key of its ephemeral pairing key, for a *bearer credential*
(256 bits, bound to that workflow only, short lived) and a pairing phrase
(:mod:`openxpki_py_token.pairing`).  The code is a bearer secret, so the
credential may report a card but do nothing with it until the user has
confirmed the phrase in the browser (``confirmed_at``).  Only SHA-256 hashes
of codes and credentials are stored: a copy of the database does not let
anyone enroll a card in someone's name.

Wrong codes are limited twice, neither of which refuses a right code: per
client address (too many → 429 for further *wrong* codes), and per code,
found by its first characters (too many guesses at one code end it).  See
docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from openxpki_py_token.pairing import NONCE_BYTES, pairing_phrase, parse_public_key
from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.engine import Connection

from ..audit import append_audit
from ..db.schema import agent_credential, enrollment_code, enrollment_failure
from ..errors import AuthError
from .policy import EnrollmentLimits

CODE_BYTES = 13  # 104 bits → 21 base32 characters, shown as 5 groups
SELECTOR_CHARS = 4  # 20 of the 104 bits name the code; 84 bits stay secret
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


class AgentKeyInvalid(EnrollmentRefused):
    """The agent sent no usable pairing key with the code (an old agent, or a broken one)."""

    code = "enroll.agent_key"


@dataclass(frozen=True)
class AgentGrant:
    access_token: str
    workflow_id: int
    login: str
    expires_at: datetime
    nonce: str  # base64url; the agent derives the phrase from it and its own key
    phrase: str


@dataclass(frozen=True)
class AgentCredential:
    """Who a bearer credential acts for, and whether the user confirmed its pairing phrase."""

    workflow_id: int
    login: str
    credential_id: int  # the id of the code it was traded for: unique per credential
    phrase: str
    confirmed: bool


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def normalize_code(code: str) -> str:
    """Codes are read aloud and typed: ignore case, spaces and dashes."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def format_code(raw: str) -> str:
    return "-".join(raw[i:i + 5] for i in range(0, len(raw), 5))


# Run on every page action, code and redeem: built once (issue #15).  SET values come from the parameters.
_END_CODES = enrollment_code.update().where(
    enrollment_code.c.workflow_id == bindparam("b_workflow"), enrollment_code.c.used_at.is_(None),
    enrollment_code.c.expires_at > bindparam("b_now"))
_END_CREDENTIALS = agent_credential.update().where(
    agent_credential.c.workflow_id == bindparam("b_workflow"), agent_credential.c.expires_at > bindparam("b_now"))
_LIVE_PAIRING = (select(agent_credential)
                 .where(agent_credential.c.workflow_id == bindparam("b_workflow"),
                        agent_credential.c.expires_at > bindparam("b_now"))
                 .order_by(agent_credential.c.created_at.desc()).limit(1))
_CONFIRM_PAIRING = agent_credential.update().where(
    agent_credential.c.workflow_id == bindparam("b_workflow"), agent_credential.c.code_id == bindparam("b_code"),
    agent_credential.c.expires_at > bindparam("b_now"))


def revoke_workflow_access(conn: Connection, workflow_id: int, *, now: datetime, credentials: bool = True) -> None:
    """End every unused code and (unless told not to) every agent credential of the workflow.

    One agent at a time: a new code, a new agent or a rejected card leaves no
    older credential that could still report a card.
    """
    conn.execute(_END_CODES, {"b_workflow": workflow_id, "b_now": now, "expires_at": now})
    if credentials:
        conn.execute(_END_CREDENTIALS, {"b_workflow": workflow_id, "b_now": now, "expires_at": now})


def new_enrollment_code(conn: Connection, *, workflow_id: int, login: str, limits: EnrollmentLimits,
                        now: datetime) -> str:
    """A fresh code for the workflow; earlier codes and agent credentials of it stop working."""
    revoke_workflow_access(conn, workflow_id, now=now)
    raw = base64.b32encode(secrets.token_bytes(CODE_BYTES)).decode().rstrip("=")
    conn.execute(enrollment_code.insert(), {
        "code_hash": _hash(raw), "selector": raw[:SELECTOR_CHARS], "failures": 0,
        "workflow_id": workflow_id, "login": login, "created_at": now,
        "expires_at": now + timedelta(seconds=limits.code_lifetime),
    })
    append_audit(conn, actor=login, event="enroll.code", target=f"workflow:{workflow_id}")
    return format_code(raw)


def _address_limited(conn: Connection, client: str, limits: EnrollmentLimits, now: datetime) -> bool:
    since = now - timedelta(seconds=limits.failure_window)  # older rows: housekeeping deletes them
    failures = conn.execute(
        select(func.count()).select_from(enrollment_failure)
        .where(enrollment_failure.c.client == client[:64], enrollment_failure.c.failed_at >= since)
    ).scalar_one()
    return int(failures) >= limits.max_failures


def _wrong_code(conn: Connection, selector: str, *, client: str, limits: EnrollmentLimits,
                now: datetime, sso_login: str | None) -> EnrollmentRefused:
    """Count a wrong code against the code it names and the address it came from.

    A code that drew ``max_code_failures`` guesses ends (the page makes a new
    one): a guesser with many addresses still gets only a few tries at it.
    An address over its limit gets 429 for wrong codes only; its further
    guesses are not stored, so a flood cannot grow the table.
    """
    aimed = conn.execute(
        select(enrollment_code.c.id, enrollment_code.c.workflow_id, enrollment_code.c.failures)
        .where(enrollment_code.c.selector == selector, enrollment_code.c.used_at.is_(None),
               enrollment_code.c.expires_at > now)
    ).all()
    for code_id, workflow_id, failures in aimed:
        ended = failures + 1 >= limits.max_code_failures
        conn.execute(enrollment_code.update().where(enrollment_code.c.id == code_id).values(
            failures=enrollment_code.c.failures + 1, **({"expires_at": now} if ended else {})))
        if ended:
            append_audit(conn, actor=sso_login or "agent", event="enroll.code_ended", outcome="refused",
                         target=f"workflow:{workflow_id}", details={"client": client, "failures": failures + 1})
    append_audit(conn, actor=sso_login or "agent", event="enroll.redeem", outcome="refused",
                 details={"code": "enroll.code_invalid", "client": client})
    if _address_limited(conn, client, limits, now):
        return EnrollmentRateLimited(
            f"too many wrong enrollment codes from this address; wait {limits.failure_window // 60} minutes "
            "(a right code is still accepted)", retry_after=limits.failure_window)
    conn.execute(enrollment_failure.insert(), {"client": client[:64], "failed_at": now})
    return EnrollmentRefused("this enrollment code is not valid; copy it again from the web page",
                             code="enroll.code_invalid")


def redeem_code(conn: Connection, code: str, *, agent_key: str, client: str, limits: EnrollmentLimits,
                now: datetime, sso_login: str | None = None) -> AgentGrant:
    """Trade a code and the agent's pairing key for a bearer credential and the pairing phrase.

    Runs in its own transaction: the caller commits failures too (they are
    the rate limits' memory), so refusals are recorded before raising.
    """
    try:
        public_key = parse_public_key(agent_key)
    except ValueError:
        raise AgentKeyInvalid("send the agent's pairing key (agent_key: base64url Ed25519 public key); "
                              "update openxpki-py-token") from None
    normalized = normalize_code(code)
    row = conn.execute(
        select(enrollment_code).where(enrollment_code.c.code_hash == _hash(normalized))
    ).mappings().first()
    if row is None:
        raise _wrong_code(conn, normalized[:SELECTOR_CHARS], client=client, limits=limits, now=now,
                          sso_login=sso_login)
    # The code is right: no address limit applies (an office behind one NAT
    # address must not be locked out by a neighbour's typos).  Used and
    # expired codes are no guesses either: a rerun agent is no attack.
    refusal: EnrollmentRefused | None = None
    if sso_login is not None and sso_login != row["login"]:
        refusal = EnrollmentWrongUser("this enrollment code belongs to another user")
    elif row["used_at"] is not None:
        refusal = EnrollmentCodeUsed(
            "this enrollment code was already used (by an earlier run, or by someone who saw it: then "
            "press \"No\" on the web page); rerun the agent with its saved session, or get a new code "
            "from the web page")
    elif row["expires_at"] <= now:
        refusal = EnrollmentRefused("this enrollment code has expired or was withdrawn; get a new one from "
                                    "the web page", code="enroll.code_expired")
    if refusal is not None:
        append_audit(conn, actor=sso_login or "agent", event="enroll.redeem", outcome="refused",
                     target=f"workflow:{row['workflow_id']}", details={"code": refusal.code, "client": client})
        raise refusal
    claimed = conn.execute(
        enrollment_code.update()
        .where(enrollment_code.c.id == row["id"], enrollment_code.c.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if claimed != 1:  # a concurrent redeem won
        raise EnrollmentCodeUsed("this enrollment code was already used")
    # The newest agent is the only one: older credentials of this workflow end.
    conn.execute(_END_CREDENTIALS, {"b_workflow": row["workflow_id"], "b_now": now, "expires_at": now})
    access_token = secrets.token_urlsafe(TOKEN_BYTES)
    # Chosen after the agent's key is known: no key can be ground to match a phrase.
    nonce = secrets.token_bytes(NONCE_BYTES)
    phrase = pairing_phrase(int(row["workflow_id"]), nonce, public_key)
    expires = now + timedelta(seconds=limits.agent_token_lifetime)
    conn.execute(agent_credential.insert(), {
        "token_hash": _hash(access_token), "code_id": row["id"], "workflow_id": row["workflow_id"],
        "login": row["login"], "created_at": now, "expires_at": expires, "agent_key": agent_key[:64],
        "phrase": phrase,
    })
    append_audit(conn, actor=row["login"], event="enroll.redeem", target=f"workflow:{row['workflow_id']}",
                 details={"client": client, "phrase": phrase})
    return AgentGrant(access_token, int(row["workflow_id"]), row["login"], expires,
                      base64.urlsafe_b64encode(nonce).decode("ascii").rstrip("="), phrase)


# Every agent request runs it: built once (issue #15).
_CREDENTIAL = select(agent_credential).where(agent_credential.c.token_hash == bindparam("b_hash"))


def check_credential(conn: Connection, access_token: str, *, now: datetime) -> AgentCredential:
    """The workflow, login and pairing the bearer credential was issued for."""
    row = conn.execute(_CREDENTIAL, {"b_hash": _hash(access_token)}).mappings().first()
    if row is None:
        raise CredentialRefused("the agent's session is not valid; start again with a new code from the web page")
    if row["expires_at"] <= now:
        raise CredentialRefused(
            "the agent's session has ended (it expired, or a newer code or agent replaced it, or the pairing "
            "was refused on the web page); get a new code from the web page", code="auth.token_expired")
    return AgentCredential(int(row["workflow_id"]), row["login"], int(row["code_id"]), row["phrase"],
                           row["confirmed_at"] is not None)


def live_pairing(conn: Connection, workflow_id: int, *, now: datetime) -> AgentCredential | None:
    """The workflow's one live agent credential (one agent at a time), if any."""
    row = conn.execute(_LIVE_PAIRING, {"b_workflow": workflow_id, "b_now": now}).mappings().first()
    if row is None:
        return None
    return AgentCredential(int(row["workflow_id"]), row["login"], int(row["code_id"]), row["phrase"],
                           row["confirmed_at"] is not None)


def confirm_pairing(conn: Connection, workflow_id: int, credential_id: int, *, now: datetime) -> bool:
    """The user saw this agent's phrase and says it is theirs; False if that agent is gone meanwhile."""
    done = conn.execute(_CONFIRM_PAIRING, {"b_workflow": workflow_id, "b_code": credential_id, "b_now": now,
                                           "confirmed_at": now}).rowcount
    return bool(done == 1)


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
