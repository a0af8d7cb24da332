"""A card's life: explicit states and the transitions between them, with their effect on its certificates.

::

    active ──suspend──▶ suspended ──resume──▶ active        (certificates on hold, then released)
    active | suspended ──lost──▶ lost                        (revoked: keyCompromise)
    active | suspended ──damaged──▶ destroyed                (revoked: superseded)
    any but revoked ──terminate──▶ revoked                   (leaver: every certificate revoked, affiliationChanged)

The RA and CA Operators may make every transition; the card's owner may
report their own card lost (a User, from "My certificates").  The card's
status, each certificate's revocation or release and the audit row commit in
one transaction: a card is never "lost" with valid certificates.  Only an
``active`` card can be personalized (personalization/tokens.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection, Engine

from .. import roles
from ..audit import append_audit
from ..db.schema import certificate, token
from ..errors import NotFound, NotPermitted, PolicyViolation
from . import policy
from .revocation import HOLD, clean_comment

if TYPE_CHECKING:
    from ..crypto.ca import CertificateAuthority


@dataclass(frozen=True)
class Transition:
    name: str
    label: str
    sources: frozenset[str]
    target: str
    effect: str  # hold | release | revoke
    reason: str | None = None  # RFC 5280 reason of the revocation or hold
    owner_may: bool = False  # the card's owner (role User) may do it on their own card


TRANSITIONS: Mapping[str, Transition] = {t.name: t for t in (
    Transition("suspend", "Suspend (certificates on hold)", frozenset({"active"}), "suspended", "hold", HOLD),
    Transition("resume", "Resume (release the holds)", frozenset({"suspended"}), "active", "release"),
    Transition("lost", "Lost or stolen (revoke: keyCompromise)", frozenset({"active", "suspended"}), "lost",
               "revoke", "keyCompromise", owner_may=True),
    Transition("damaged", "Damaged (revoke: superseded)", frozenset({"active", "suspended"}), "destroyed",
               "revoke", "superseded"),
    Transition("terminate", "Terminate: owner left (revoke all: affiliationChanged)",
               frozenset({"active", "suspended", "lost", "destroyed"}), "revoked", "revoke", "affiliationChanged"),
)}


@dataclass(frozen=True)
class TransitionResult:
    serial: str
    status: str
    certificates: tuple[str, ...]  # held, released or revoked
    effect: str = ""  # hold | release | revoke

    def summary(self) -> str:
        """One line for an operator: what the card is now and what happened to its certificates."""
        verb = {"hold": "put on hold", "release": "released from hold", "revoke": "revoked"}.get(self.effect, "changed")
        changed = (f"; {verb} {len(self.certificates)} certificate(s): {', '.join(self.certificates)}"
                   if self.certificates else "; no certificate changed")
        return f"card {self.serial} is now {self.status}{changed}"


def available(status: str, role: str | None, *, own_card: bool = False) -> list[Transition]:
    """The transitions ``role`` may make on a card in ``status`` (for the buttons)."""
    operator = policy.may(role, "token.status")
    return [t for t in TRANSITIONS.values() if status in t.sources
            and (operator or (role == roles.USER and own_card and t.owner_may))]


def transition(db: Engine, ca: CertificateAuthority, serial: str, name: str, *, actor: str, role: str,
               comment: str | None = None) -> TransitionResult:
    step = TRANSITIONS.get(name)
    if step is None:
        raise PolicyViolation(f"unknown card transition '{name[:32]}'; use one of {', '.join(TRANSITIONS)}",
                              code="token.transition")
    note = clean_comment(comment)
    with db.connect() as conn:
        owner = conn.execute(select(token.c.owner).where(token.c.serial == serial)).first()
    if owner is None:
        raise NotFound(f"no card with serial {serial[:128]} is registered")
    _check_actor(db, serial, owner[0], step, actor=actor, role=role)
    with db.begin() as conn:
        card = conn.execute(select(token).where(token.c.serial == serial).with_for_update()).mappings().one()
        if card["status"] not in step.sources:
            raise PolicyViolation(f"card {serial} is {card['status']}; '{name}' needs a card that is "
                                  f"{' or '.join(sorted(step.sources))}", code="token.transition_state")
        done = _apply(conn, ca, int(card["id"]), step, actor=actor, role=role, comment=note)
        conn.execute(token.update().where(token.c.id == card["id"]).values(status=step.target))
        append_audit(conn, actor=actor, role=role, event="token.transition", target=serial,
                     details={"transition": name, "from": card["status"], "to": step.target,
                              "certificates": list(done), **({"comment": note} if note else {})})
    return TransitionResult(serial, step.target, done, step.effect)


def _check_actor(db: Engine, serial: str, owner: str | None, step: Transition, *, actor: str, role: str) -> None:
    if policy.may(role, "token.status"):
        return
    if role == roles.USER and step.owner_may and owner == actor:
        return
    with db.begin() as conn:
        append_audit(conn, actor=actor, role=role, event="token.transition", outcome="refused", target=serial,
                     details={"transition": step.name})
    if role == roles.USER and owner != actor:  # someone else's card: not even whether it exists
        raise NotFound(f"you have no card {serial[:128]}")
    raise NotPermitted(f"the role {role} may not '{step.name}' this card", code="console.role")


def _apply(conn: Connection, ca: CertificateAuthority, card_id: int, step: Transition, *, actor: str, role: str,
           comment: str | None) -> tuple[str, ...]:
    """Hold, release or revoke the card's certificates through the CA (which audits each one)."""
    c = certificate.c
    on_hold = (c.status == "revoked") & (c.revocation_reason == HOLD)
    wanted = {"hold": c.status == "valid", "release": on_hold, "revoke": or_(c.status == "valid", on_hold)}
    serials = [r.serial for r in conn.execute(select(c.serial).where(c.token_id == card_id, wanted[step.effect])
                                              .order_by(c.id))]
    for serial in serials:
        if step.effect == "release":
            ca.release_hold(conn, int(serial, 16), actor=actor, role=role, comment=comment)
        else:
            assert step.reason is not None
            ca.revoke_certificate(conn, int(serial, 16), step.reason, actor=actor, role=role, comment=comment)
    return tuple(serials)
