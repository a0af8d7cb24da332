"""A card's life: apply a transition of the lifecycle (``lifecycle.yaml``, :mod:`.lifecycle`) to a card.

::

    active ──suspend──▶ suspended ──resume──▶ active          (certificates on hold, then released)
    active ──forgotten──▶ forgotten ──returned──▶ active      (on hold meanwhile; a temporary card may stand in,
                                                               and "returned" revokes it: cessationOfOperation)
    active | suspended | forgotten ──lost──▶ lost              (revoked: keyCompromise)
    active | suspended ──damaged──▶ destroyed                  (revoked: superseded)
    temporary card ──retire──▶ retired                         (revoked: cessationOfOperation)
    … ──terminate──▶ revoked                                   (leaver: every certificate revoked, affiliationChanged,
                                                               the temporary card's too)

Who may do which is data too: a transition's ``roles``, and ``owner_may``
for the card's owner (a User may report their own card lost from "My
certificates"; an operator on their own card is its owner, nothing more).
The card's status, each certificate's revocation or release, the temporary
card's and the audit rows commit in one transaction: a card is never "lost"
with valid certificates, and a permanent card is never active again while
its temporary card still works.  Only an ``active`` card gets certificates:
requesting and issuing lock its row and check (personalization/tokens.py),
and a card made unusable ends its running personalizations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection, Engine

from .. import roles
from ..audit import append_audit
from ..db.schema import certificate, token
from ..errors import NotFound, NotPermitted, PolicyViolation, WorkflowError
from .lifecycle import USABLE, CertificateEffect, Lifecycle, TemporaryCardEffect, Transition
from .revocation import HOLD, clean_comment

if TYPE_CHECKING:
    from ..crypto.ca import CertificateAuthority
    from ..workflow.engine import WorkflowEngine

PERSONALIZATION = "smartcard_personalization"


@dataclass(frozen=True)
class TransitionResult:
    serial: str
    status: str
    certificates: tuple[str, ...]  # held, released or revoked
    effect: str = ""  # hold | release | revoke | keep
    temporary: tuple[TransitionResult, ...] = ()  # the temporary cards that changed with it

    def summary(self) -> str:
        """One line for an operator: what the card is now and what happened to its certificates."""
        verb = {"hold": "put on hold", "release": "released from hold", "revoke": "revoked"}.get(self.effect, "changed")
        changed = (f"; {verb} {len(self.certificates)} certificate(s): {', '.join(self.certificates)}"
                   if self.certificates else "; no certificate changed")
        also = "".join(f"; temporary {t.summary()}" for t in self.temporary)
        return f"card {self.serial} is now {self.status}{changed}{also}"


def available(lifecycle: Lifecycle, card: Any, role: str | None, *, own_card: bool = False) -> list[Transition]:
    """The transitions ``role`` may make on ``card`` (a token row) in its status (for the buttons)."""
    return [t for t in lifecycle.transitions.values() if card["status"] in t.sources and card["kind"] in t.kinds
            and _may(t, role, own_card=own_card)]


def _may(step: Transition, role: str | None, *, own_card: bool) -> bool:
    # On their own card an operator is its owner: an operator role must not lift a hold security put there.
    if own_card:
        return step.owner_may and (role == roles.USER or role in roles.OPERATORS)
    return role in step.roles


def transition(db: Engine, ca: CertificateAuthority, lifecycle: Lifecycle, serial: str, name: str, *, actor: str,
               role: str, workflows: WorkflowEngine, comment: str | None = None) -> TransitionResult:
    step = lifecycle.get(name)
    if step is None:
        raise PolicyViolation(f"unknown card transition '{name[:32]}'; use one of {', '.join(lifecycle.transitions)}",
                              code="token.transition")
    note = clean_comment(comment)
    with db.connect() as conn:
        owner = conn.execute(select(token.c.owner).where(token.c.serial == serial)).first()
    if owner is None and role != roles.USER:  # a User learns nothing of other cards: _check_actor answers them
        raise NotFound(f"no card with serial {serial[:128]} is registered")
    _check_actor(db, serial, owner[0] if owner is not None else None, step, actor=actor, role=role)
    with db.begin() as conn:
        card = _lock_card_and_stand_ins(conn, serial)
        _check_card(card, step)
        stand_ins: tuple[TransitionResult, ...] = ()
        if (effect := step.temporary_card) is not None:
            stand_ins = tuple(_change_card(conn, ca, row, effect.target, effect.certificates, name, actor=actor,
                                           role=role, comment=note) for row in _temporary_cards(conn, card, effect))
        result = _change_card(conn, ca, card, step.target, step.certificates, name, actor=actor, role=role,
                              comment=note, temporary=stand_ins)
    for changed in (result, *result.temporary):
        if changed.status != USABLE:
            end_personalizations(workflows, changed.serial, f"card {changed.serial} is now {changed.status} "
                                 f"('{name}' by {actor}): it gets no more certificates", actor=actor)
    return result


def end_personalizations(workflows: WorkflowEngine, serial: str, reason: str, *, actor: str) -> list[int]:
    """Fail the unfinished personalizations of a card made unusable, so the page and the agent learn at once.

    After the transition committed: issuing checks the card in its own
    transaction (personalization/tokens.py ``lock_usable_card``), so nothing
    is issued for the card from now on; this only ends what would otherwise
    wait.  An issuance child still open is failed first (its parent then ends
    with the reason); through the engine, audited as ``workflow.fail`` by
    ``actor`` in role System.
    """
    ended = []
    open_ones = [wf for wf in workflows.search(wf_type=PERSONALIZATION, token_serial=serial, limit=1000)
                 if not wf.final]
    for wf in open_ones:
        for run in [c for c in workflows.children(wf.id) if not c.final] + [wf]:
            try:
                workflows.fail(run.id, actor=actor, role=roles.SYSTEM, reason=reason)
                ended.append(run.id)
            except WorkflowError:  # finished meanwhile (or already: the parent ended with its child)
                continue
    return ended


def _check_card(card: Any, step: Transition) -> None:
    if card["kind"] not in step.kinds:
        raise PolicyViolation(f"card {card['serial']} is a {card['kind']} card; '{step.name}' is for "
                              f"{' and '.join(sorted(step.kinds))} cards", code="token.transition_kind")
    if card["status"] not in step.sources:
        raise PolicyViolation(f"card {card['serial']} is {card['status']}; '{step.name}' needs a card that is "
                              f"{' or '.join(sorted(step.sources))}", code="token.transition_state")


def _lock_card_and_stand_ins(conn: Connection, serial: str) -> Any:
    """The card's row, with it and the cards standing in for it locked in one statement, in id order.

    Id order is the order every transaction that locks several cards uses
    (the PIN unblock's rate limit locks all of an owner's cards so): locking
    the card and then its stand-ins (which usually have lower ids: recycled
    cards) could wait for an unblock check holding them in the opposite order.
    """
    card_id = conn.execute(select(token.c.id).where(token.c.serial == serial)).scalar_one()
    rows = conn.execute(select(token).where(or_(token.c.id == card_id, token.c.stands_in_for == card_id))
                        .order_by(token.c.id).with_for_update()).mappings().all()
    return next(r for r in rows if r["id"] == card_id)


def _temporary_cards(conn: Connection, card: Any, effect: TemporaryCardEffect) -> list[Any]:
    """The temporary cards standing in for ``card`` that the transition changes (locked, in this transaction)."""
    return list(conn.execute(select(token).where(
        token.c.stands_in_for == card["id"], token.c.kind == "temporary",
        token.c.status.in_(sorted(effect.sources))).order_by(token.c.id).with_for_update()).mappings())


def _change_card(conn: Connection, ca: CertificateAuthority, card: Any, target: str, effect: CertificateEffect,
                 name: str, *, actor: str, role: str, comment: str | None,
                 temporary: tuple[TransitionResult, ...] = ()) -> TransitionResult:
    done = _apply(conn, ca, int(card["id"]), effect, actor=actor, role=role, comment=comment)
    conn.execute(token.update().where(token.c.id == card["id"]).values(status=target))
    details: dict[str, Any] = {"transition": name, "from": card["status"], "to": target, "certificates": list(done)}
    if card["kind"] == "temporary":
        details["kind"] = "temporary"
    if temporary:
        details["temporary_cards"] = [t.serial for t in temporary]
    if comment:
        details["comment"] = comment
    append_audit(conn, actor=actor, role=role, event="token.transition", target=card["serial"], details=details)
    return TransitionResult(card["serial"], target, done, effect.effect, temporary)


def _check_actor(db: Engine, serial: str, owner: str | None, step: Transition, *, actor: str, role: str) -> None:
    if _may(step, role, own_card=owner == actor):
        return
    with db.begin() as conn:
        append_audit(conn, actor=actor, role=role, event="token.transition", outcome="refused", target=serial,
                     details={"transition": step.name})
    if role == roles.USER and (owner is None or owner != actor):  # not theirs: not even whether it exists
        raise NotFound(f"you have no card {serial[:128]}")
    if owner == actor and role in step.roles:
        raise NotPermitted(f"card {serial[:128]} is your own: another operator must '{step.name}' it (on your own "
                           "card you may do only what its owner may)", code="token.own_card")
    raise NotPermitted(f"the role {role} may not '{step.name}' this card", code="console.role")


def _apply(conn: Connection, ca: CertificateAuthority, card_id: int, effect: CertificateEffect, *, actor: str,
           role: str, comment: str | None) -> tuple[str, ...]:
    """Hold, release or revoke the card's certificates through the CA (which audits each one)."""
    if effect.effect == "keep":
        return ()
    c = certificate.c
    on_hold = (c.status == "revoked") & (c.revocation_reason == HOLD)
    wanted = {"hold": c.status == "valid", "release": on_hold, "revoke": or_(c.status == "valid", on_hold)}
    serials = [r.serial for r in conn.execute(select(c.serial).where(c.token_id == card_id,
                                                                     wanted[effect.effect]).order_by(c.id))]
    for serial in serials:
        if effect.effect == "release":
            ca.release_hold(conn, int(serial, 16), actor=actor, role=role, comment=comment)
        else:
            assert effect.reason is not None
            ca.revoke_certificate(conn, int(serial, 16), effect.reason, actor=actor, role=role, comment=comment)
    return tuple(serials)
