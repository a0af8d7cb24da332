"""Temporary cards: a second card that stands in, briefly, for a permanent card forgotten at home.

The help desk (or the owner, where the lifecycle allows) moves the permanent
card to a ``stand_in`` state (``forgotten``): its certificates go on hold.
The next card *new to its owner* that the owner personalizes is registered
as the temporary card for it (``token.kind = temporary``, ``stands_in_for``)
until ``cards.temporary.validity_days`` from then (``temporary_until``): its
certificates never outlive that end (nor the profile's validity), however
often it is personalized again.  Only the help desk gives more days (retire,
``token release``, a new temporary card).  There is one live temporary card per
permanent card.  "returned" on the permanent card revokes the temporary
card's certificates and releases the holds (console/cards.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection

from ..audit.pending import last_audit_time
from ..console.lifecycle import HOLD, CardsConfig
from ..db.schema import certificate, token
from ..errors import PolicyViolation
from .tokens import USABLE


@dataclass(frozen=True)
class StandIn:
    """A card about to be personalized as the temporary card of ``permanent``."""

    permanent_id: int
    permanent_serial: str
    until: datetime  # the temporary card's end (token.temporary_until): no certificate outlives it
    now: datetime

    @property
    def validity_days(self) -> int:
        """The days left, rounded up (the CA cuts the certificate at ``until`` to the second)."""
        left = self.until - self.now
        return max(1, left.days + (1 if left % timedelta(days=1) else 0))

    def as_context(self) -> dict[str, Any]:
        return {"stands_in_for": self.permanent_serial, "validity_days": self.validity_days,
                "until": self.until.isoformat()}


def stand_in_for(conn: Connection, cards: CardsConfig, *, owner: str, serial: str, now: datetime,
                 lock: bool = False) -> StandIn | None:
    """Whether ``serial`` is (or becomes) a temporary card of ``owner``'s, and for which card.

    None: a permanent card.  Refuses a second live temporary card, a
    temporary card whose permanent card is no longer forgotten, and one whose
    days are over (its certificates expired: only the help desk extends it).
    ``lock``: when registering, lock the forgotten card's row, so that two
    cards confirmed at the same moment cannot both stand in for it (and
    "returned", which locks it too, waits or goes first).
    """
    stand_in_states = sorted(cards.lifecycle.stand_in)
    days = cards.temporary_validity_days
    row = conn.execute(select(token).where(token.c.serial == serial)).mappings().first()
    if row is not None and row["owner"] == owner:  # the owner's card already: it keeps its kind
        if row["kind"] != "temporary":
            _refuse_while_stand_in(conn, owner, serial, stand_in_states)
            return None
        permanent = conn.execute(select(token).where(token.c.id == row["stands_in_for"])).mappings().one()
        if permanent["status"] not in stand_in_states:
            raise PolicyViolation(
                f"card {serial} was the temporary card for your card {permanent['serial']}, which is "
                f"{permanent['status']} now; a temporary card is personalized only while its permanent card is "
                "forgotten: ask the help desk", code="token.temporary_ended")
        # Its end was fixed when it was registered: personalizing it again gives no more days.
        ends = row["temporary_until"] or valid_until(conn, int(row["id"]))  # (registered before the column)
        if ends is not None and ends <= now:
            raise PolicyViolation(
                f"card {serial} was a temporary card until {ends:%Y-%m-%d %H:%M} UTC, which is over; bring it back "
                f"with your card {permanent['serial']} to the help desk", code="token.temporary_ended")
        return StandIn(int(permanent["id"]), permanent["serial"], ends or now + timedelta(days=days), now)
    query = select(token).where(token.c.owner == owner, token.c.kind == "permanent",
                                token.c.status.in_(stand_in_states)).order_by(token.c.id)
    forgotten = list(conn.execute(query.with_for_update() if lock else query).mappings())
    for permanent in forgotten:
        live = live_stand_in(conn, int(permanent["id"]))
        if live is None:
            return StandIn(int(permanent["id"]), permanent["serial"], now + timedelta(days=days), now)
    if forgotten:
        raise PolicyViolation(
            f"your card {forgotten[0]['serial']} is {forgotten[0]['status']} and card {live} already stands in "
            "for it: one temporary card per card. Use that one, or ask the help desk", code="token.temporary_exists")
    return None


def _refuse_while_stand_in(conn: Connection, owner: str, serial: str, stand_in_states: list[str]) -> None:
    """While a card of theirs is forgotten, an owner's other permanent card gets no new certificates.

    Its full validity would side-step the cap on the temporary card (two
    working cards for the full term); its current certificates keep working.
    """
    away = conn.execute(select(token.c.serial, token.c.status).where(
        token.c.owner == owner, token.c.kind == "permanent", token.c.serial != serial,
        token.c.status.in_(stand_in_states)).order_by(token.c.id)).first()
    if away is not None:
        raise PolicyViolation(
            f"your card {away.serial} is {away.status}: until the help desk marks it returned (or lost), only its "
            f"temporary card is personalized, not card {serial}", code="token.stand_in_only")


def live_stand_in(conn: Connection, permanent_id: int) -> str | None:
    """The serial of the temporary card that still works for this card: usable, or with live certificates."""
    c = certificate.c
    alive = select(c.id).where(c.token_id == token.c.id, or_(
        c.status == "valid", (c.status == "revoked") & (c.revocation_reason == HOLD))).exists()
    return conn.execute(select(token.c.serial).where(
        token.c.stands_in_for == permanent_id, token.c.kind == "temporary",
        or_(token.c.status == USABLE, alive)).order_by(token.c.id)).scalar()


def stand_ins(conn: Connection, permanent_id: int) -> list[dict[str, Any]]:
    """The temporary cards that stood in for this card, newest first, each with its certificates' end."""
    return [{**row, "valid_until": valid_until(conn, int(row["id"]))} for row in conn.execute(
        select(token).where(token.c.stands_in_for == permanent_id).order_by(token.c.id.desc())).mappings()]


def forgotten_cards(conn: Connection, cards: CardsConfig, now: datetime) -> list[dict[str, Any]]:
    """Every card in a stand-in state, with its temporary cards; ``overdue`` when none works any more.

    A temporary card that runs out leaves its permanent card on hold: nothing
    releases the holds but the help desk ("returned", or "lost").  This is
    their follow-up list (``openxpki-py console forgotten``).
    """
    rows = conn.execute(select(token).where(token.c.kind == "permanent",
                                            token.c.status.in_(sorted(cards.lifecycle.stand_in)))
                        .order_by(token.c.id)).mappings()
    listed = []
    for row in rows:
        since = last_audit_time(conn, event="token.transition", target=row["serial"])
        temps = [{"serial": t["serial"], "status": t["status"], "valid_until": t["valid_until"]}
                 for t in stand_ins(conn, int(row["id"]))]
        working = [t for t in temps if t["status"] == USABLE and (t["valid_until"] is None or t["valid_until"] > now)]
        ended = since is not None and since + timedelta(days=cards.temporary_validity_days) < now
        listed.append({"serial": row["serial"], "owner": row["owner"], "status": row["status"], "since": since,
                       "temporary_cards": temps, "overdue": not working and (bool(temps) or ended)})
    return listed


def valid_until(conn: Connection, card_id: int) -> datetime | None:
    """When the card's last certificate ends (None: none issued yet)."""
    return conn.execute(select(func.max(certificate.c.not_after)).where(certificate.c.token_id == card_id)).scalar()
