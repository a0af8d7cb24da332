"""Activities of ``pin_unblock`` (see its YAML for the flow).

The context keeps ``token_serial`` (the card, named at the start), ``owner``
(its registered owner, the only person who may run the agent for it),
``card`` (what the agent reported: its profile, the agent credential that
reported it, whether the owner confirmed it) and ``result``.  The credential
itself is never here (:mod:`.agent_calls`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Row

from .. import roles
from ..db.schema import token, workflow, workflow_attribute
from ..errors import NotFound, PolicyViolation, UnexpectedStep
from ..personalization.enrollment import confirm_pairing, revoke_workflow_access
from ..services import pki
from ..workflow.context import ActivityContext
from ..workflow.registry import Registry

callables = Registry()

WF_TYPE = "pin_unblock"
#: Card types whose unblock credential the server derives, and its kind (crypto.card_admin.CARD_KINDS).
UNBLOCK_KINDS = {"piv": "puk", "openpgp": "admin_pin"}


class UnblockRateLimited(PolicyViolation):
    """The card, or its owner's cards, had as many PIN unblocks in the window as the configuration allows."""

    code = "unblock.rate_limited"


def _pop_inputs(ctx: ActivityContext, *names: str) -> None:
    for name in names:
        ctx.context.pop(name, None)


def recent_unblocks(conn: Connection, key: str, value: str, *, since: object, exclude: int) -> int:
    """Unblocks (past the check, whatever became of them) of a card or an owner since ``since``."""
    named = select(workflow_attribute.c.workflow_id).where(workflow_attribute.c.attr_key == key,
                                                          workflow_attribute.c.attr_value == value)
    return int(conn.execute(
        select(func.count()).select_from(workflow)
        .where(workflow.c.wf_type == WF_TYPE, workflow.c.id.in_(named), workflow.c.id != exclude,
               workflow.c.created_at >= since, workflow.c.state != "REFUSED")).scalar_one())


def _owners_cards_locked(conn: Connection, serial: str, *, only_for: str | None = None) -> Row[Any, Any] | None:
    """Card ``serial``'s owner and status, with every card of that owner locked until the step commits.

    The rate limits are a count, then a record: two unblocks checked at once
    for one owner's cards (the same card, or two of them) would both count
    the same past and both pass.  Locking the owner's card rows makes them
    take turns; in id order, as every transaction that locks several cards
    does (console.cards), so none waits for another in the opposite order.
    ``only_for``: a User's own request locks nothing of another owner's (it is
    refused as unknown anyway).  SQLite needs nothing: its write transactions
    already take turns.
    """
    card = conn.execute(select(token.c.owner, token.c.status).where(token.c.serial == serial)).first()
    for _ in range(3):
        if card is None or card.owner is None or (only_for is not None and card.owner != only_for):
            return card
        locked_for = card.owner
        conn.execute(select(token.c.id).where(token.c.owner == locked_for).order_by(token.c.id)
                     .with_for_update()).all()
        # Read again under the lock: the card may have changed state, or hands (then lock the new owner's).
        card = conn.execute(select(token.c.owner, token.c.status).where(token.c.serial == serial)).first()
        if card is None or card.owner == locked_for:
            return card
    raise UnexpectedStep(f"card {serial} is changing hands right now; try again in a moment", code="unblock.retry")


@callables.activity("check_unblock_request")
def check_unblock_request(ctx: ActivityContext) -> None:
    """A registered, active card; a User only for their own; within ``card_admin.unblock``."""
    config = pki(ctx).config.card_admin
    serial = str(ctx["token_serial"])
    if not config.enabled:
        raise PolicyViolation("this server holds no per-card admin credentials (card_admin.enabled is false): "
                              "the help desk cannot unblock a PIN; the card must be reset and personalized again",
                              code="unblock.unsupported")
    own_request = ctx.creator_role == roles.USER
    card = _owners_cards_locked(ctx.conn, serial, only_for=ctx.creator if own_request else None)
    if card is None or card.owner is None or (own_request and card.owner != ctx.creator):
        # Someone else's card is "not registered" to a User: not even whether it exists.
        raise NotFound(f"no card {serial} is registered{' to you' if own_request else ' to anyone'}",
                       code="unblock.card_unknown")
    if card.status != "active":
        raise PolicyViolation(f"card {serial} is {card.status}: only an active card's PIN is unblocked",
                              code="unblock.card_inactive")
    limits = config.unblock
    since = ctx.now - timedelta(seconds=limits.window)
    hours = limits.window // 3600 or 1
    for key, value, allowed, whose in (("token_serial", serial, limits.per_card, f"card {serial}"),
                                       ("owner", card.owner, limits.per_user, f"{card.owner}'s cards")):
        if recent_unblocks(ctx.conn, key, value, since=since, exclude=ctx.workflow_id) >= allowed:
            raise UnblockRateLimited(f"{whose} had {allowed} PIN unblock(s) in the last {hours} h already, as "
                                     "many as allowed; try later, or have the card replaced")
    ctx["owner"] = card.owner
    ctx.set_attribute("token_serial", serial)
    ctx.set_attribute("owner", card.owner)
    ctx.note = ctx.get("reason")


@callables.activity("record_unblock_card")
def record_unblock_card(ctx: ActivityContext) -> None:
    """The owner's agent reports a card: it must be the one this unblock is for; the owner then confirms."""
    serial = ctx.inputs["serial"]
    if serial != ctx["token_serial"]:
        raise UnexpectedStep(f"this PIN unblock is for card {ctx['token_serial']}; insert that card",
                             code="token.mismatch")
    profile = ctx.inputs.get("card_profile") or "generic"
    if profile not in UNBLOCK_KINDS:
        raise PolicyViolation(f"a {profile!r} card cannot be unblocked by the help desk: this server derives an "
                              f"unblock credential only for {', '.join(UNBLOCK_KINDS)} cards",
                              code="unblock.card_unsupported")
    ctx["card"] = {"serial": serial, "card_profile": profile, "agent": int(ctx.inputs["agent"]),
                   "confirmed": False}
    _pop_inputs(ctx, "serial", "agent", "card_profile")


@callables.activity("confirm_unblock_card")
def confirm_unblock_card(ctx: ActivityContext) -> None:
    """The owner says: my card, my agent (the phrase matches); that agent may now receive the credential."""
    card = ctx["card"]
    agent = int(ctx.inputs["agent"])
    _pop_inputs(ctx, "agent")
    if agent != card["agent"] or not confirm_pairing(ctx.conn, ctx.workflow_id, agent, now=ctx.now):
        raise UnexpectedStep("the agent that reported this card has been replaced or has stopped; reload the page "
                             "and compare the phrase again", code="agent.replaced")
    ctx["card"] = {**card, "confirmed": True}


@callables.activity("record_unblock_result")
def record_unblock_result(ctx: ActivityContext) -> None:
    outcome, code = ctx.inputs["outcome"], ctx.inputs.get("code")
    _pop_inputs(ctx, "outcome", "code")
    ctx["result"] = {"outcome": outcome, **({"code": code} if code else {})}
    ctx.note = outcome + (f" ({code})" if code else "")
    revoke_workflow_access(ctx.conn, ctx.workflow_id, now=ctx.now)  # the agent's session ends with the result


@callables.condition("pin_unblocked")
def pin_unblocked(ctx: ActivityContext) -> bool:
    return bool((ctx.get("result") or {}).get("outcome") == "unblocked")


@callables.activity("record_unblock_expiry")
def record_unblock_expiry(ctx: ActivityContext) -> None:
    ctx["failure"] = {"action": "expire", "code": "unblock.expired",
                      "message": f"nobody acted in time (state {ctx.state}); start a new PIN unblock"}
    revoke_workflow_access(ctx.conn, ctx.workflow_id, now=ctx.now)


@callables.activity("record_unblock_cancellation")
def record_unblock_cancellation(ctx: ActivityContext) -> None:
    ctx.note = ctx.inputs.get("reason") or f"cancelled by {ctx.actor}"
    revoke_workflow_access(ctx.conn, ctx.workflow_id, now=ctx.now)
