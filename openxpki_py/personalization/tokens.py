"""The token registry: which cards exist, whose they are, whether usable.

A card is registered to the user who *confirms* it in the browser (a
serial an agent merely reports claims nothing: serials are printed on cards
and an agent's word is no proof).  Afterwards only that user may
personalize it again, and only while its status is ``active``.  Lost,
revoked or destroyed cards are refused with a message that says why, so
the user knows to call the help desk rather than retry; marking a card so
revokes the certificates issued for it (``openxpki-py token status``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..audit import append_audit
from ..db.schema import certificate, token
from ..errors import CardNotUsable, NotFound, NotPermitted, PolicyViolation

STATUSES = ("active", "suspended", "forgotten", "lost", "revoked", "destroyed", "retired")  # console/lifecycle.yaml
USABLE = "active"
SERIAL_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class TokenInfo:
    """What the agent reads from CK_TOKEN_INFO."""

    serial: str
    model: str = ""
    manufacturer: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if not SERIAL_RE.match(self.serial):
            raise PolicyViolation(
                "the card's serial number is empty or has characters other than letters, digits and ._:-",
                code="token.serial_invalid",
            )


@dataclass(frozen=True)
class RegisteredToken:
    id: int
    serial: str
    owner: str
    status: str
    model: str | None
    manufacturer: str | None
    kind: str = "permanent"
    stands_in_for: int | None = None  # a temporary card's permanent card (personalization/temporary.py)
    temporary_until: datetime | None = None  # a temporary card's end


def check_token(conn: Connection, info: TokenInfo, *, owner: str, now: datetime,
                claim_lifetime: timedelta) -> None:
    """Refuse another user's card or an unusable one (nothing is written)."""
    row = conn.execute(select(token).where(token.c.serial == info.serial)).mappings().first()
    if row is not None:
        _check_row(conn, row, info, owner, now=now, claim_lifetime=claim_lifetime)


def _claim_expired(conn: Connection, row: Any, now: datetime, claim_lifetime: timedelta) -> bool:
    """An owner whose claim was never proven by a certificate, and not renewed for a while.

    A serial is only the agent's word: a user who confirmed someone else's
    new card serial (a script can report any serial) must not lock the real
    owner out until the help desk acts.  Once a certificate was issued for
    the card, its owner stays.
    """
    if row["last_seen"] > now - claim_lifetime:
        return False
    issued = conn.execute(select(certificate.c.id).where(certificate.c.token_id == row["id"]).limit(1)).first()
    return issued is None


def _check_row(conn: Connection, row: Any, info: TokenInfo, owner: str, *, now: datetime,
               claim_lifetime: timedelta) -> None:
    if row["owner"] is not None and row["owner"] != owner and _claim_expired(conn, row, now, claim_lifetime):
        return  # register_token takes it over (and audits whose claim lapsed)
    if row["owner"] is not None and row["owner"] != owner:  # None: released by the help desk
        append_audit(conn, actor=owner, event="token.register", outcome="refused", target=info.serial,
                     details={"reason": "owned by another user"})
        raise NotPermitted(
            f"card {info.serial} is registered to another user; ask the help desk to release it",
            code="token.owned_by_other",
        )
    if row["status"] != USABLE:
        raise NotPermitted(
            f"card {info.serial} is marked {row['status']} and cannot be personalized; use another card "
            "or ask the help desk",
            code="token.unusable",
        )


def register_token(conn: Connection, info: TokenInfo, *, owner: str, now: datetime,
                   claim_lifetime: timedelta, stands_in_for: int | None = None,
                   temporary_until: datetime | None = None) -> RegisteredToken:
    """Find or create the card for its confirmed owner; refuse another user's card or an unusable one.

    ``stands_in_for``: a card new to its owner becomes the temporary card
    for this permanent card until ``temporary_until`` (the caller checked it
    may: temporary.py).  A card the owner already has keeps its kind and end.
    """
    kind = "temporary" if stands_in_for is not None else "permanent"
    if (stands_in_for is None) != (temporary_until is None):
        raise ValueError("a temporary card needs both stands_in_for and temporary_until")
    row = conn.execute(select(token).where(token.c.serial == info.serial)).mappings().first()
    if row is None:
        result = conn.execute(token.insert(), {
            "serial": info.serial, "model": info.model[:128] or None,
            "manufacturer": info.manufacturer[:128] or None, "owner": owner, "status": USABLE,
            "first_seen": now, "last_seen": now, "kind": kind, "stands_in_for": stands_in_for,
            "temporary_until": temporary_until,
        })
        append_audit(conn, actor=owner, event="token.register", target=info.serial,
                     details={"model": info.model, "manufacturer": info.manufacturer,
                              **({"kind": kind, "stands_in_for": stands_in_for,
                                  "temporary_until": temporary_until.isoformat()} if temporary_until else {})})
        new_id = result.inserted_primary_key
        assert new_id is not None
        return RegisteredToken(int(new_id[0]), info.serial, owner, USABLE,
                               info.model or None, info.manufacturer or None, kind, stands_in_for, temporary_until)
    _check_row(conn, row, info, owner, now=now, claim_lifetime=claim_lifetime)
    if row["owner"] is not None and row["owner"] != owner:
        append_audit(conn, actor=owner, event="token.claim_lapsed", target=info.serial,
                     details={"previous_owner": row["owner"], "reason": "no certificate was ever issued for "
                              "the card under that claim"})
    changes: dict[str, Any] = {"last_seen": now, "owner": owner}
    if row["owner"] != owner:  # new to this owner (released, or a lapsed claim): its kind is decided now
        changes.update(kind=kind, stands_in_for=stands_in_for, temporary_until=temporary_until)
    conn.execute(token.update().where(token.c.id == row["id"]).values(**changes))
    return RegisteredToken(int(row["id"]), row["serial"], row["owner"], row["status"], row["model"],
                           row["manufacturer"], changes.get("kind", row["kind"]),
                           changes.get("stands_in_for", row["stands_in_for"]),
                           changes.get("temporary_until", row["temporary_until"]))


def lock_usable_card(conn: Connection, token_id: int) -> Any:
    """Lock the card's row and refuse unless it may be personalized now.

    Called where a certificate is about to be requested or issued for the
    card, in that transaction: a card transition (lost, returned, …) locks
    the row too, so it commits either before (and this refuses) or after
    (and revokes or holds what was issued).
    """
    row = conn.execute(select(token).where(token.c.id == token_id).with_for_update()).mappings().first()
    if row is None:
        raise NotFound(f"the card (token id {token_id}) is no longer registered")
    if row["status"] != USABLE:
        raise CardNotUsable(f"card {row['serial']} is {row['status']} now and gets no certificate; the "
                            "personalization ends here: use another card or ask the help desk")
    return row


def find_token(conn: Connection, serial: str) -> Any:
    row = conn.execute(select(token).where(token.c.serial == serial)).mappings().first()
    if row is None:
        raise NotFound(f"no card with serial {serial} is registered")
    return row


def release_token(conn: Connection, serial: str, *, actor: str) -> None:
    """Forget the card's owner: the next user who confirms it gets it (help desk, reissued card).

    A card that was lost, damaged or terminated becomes usable again as a
    blank card: its old certificates stay revoked, the next personalization
    gives it new keys.
    """
    row = find_token(conn, serial)
    conn.execute(token.update().where(token.c.id == row["id"]).values(owner=None, status=USABLE, kind="permanent",
                                                                       stands_in_for=None, temporary_until=None))
    append_audit(conn, actor=actor, event="token.release", target=serial,
                 details={"previous_owner": row["owner"], "previous_status": row["status"]})


def list_tokens(conn: Connection, *, owner: str | None = None) -> list[Any]:
    query = select(token).order_by(token.c.id)
    if owner is not None:
        query = query.where(token.c.owner == owner)
    return list(conn.execute(query).mappings())


def tokens_by_id(conn: Connection, ids: Iterable[int]) -> dict[int, Any]:
    """The cards with these ids, whoever holds them now (a released card still names its certificates)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    return {row["id"]: row for row in conn.execute(select(token).where(token.c.id.in_(wanted))).mappings()}


def valid_certificates_on_token(conn: Connection, token_id: int, profile: str,
                                not_after_later_than: datetime) -> list[str]:
    """Serials of still-valid certificates of ``profile`` issued for this card."""
    rows = conn.execute(
        select(certificate.c.serial).where(
            certificate.c.token_id == token_id,
            certificate.c.profile == profile,
            certificate.c.status == "valid",
            certificate.c.not_after > not_after_later_than,
        )
    )
    return [r.serial for r in rows]
