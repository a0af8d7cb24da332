"""Card transitions: the operator's buttons on the card page, and the owner's "my card is lost"."""

from __future__ import annotations

from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ... import roles
from ...console import cards
from .. import errors
from ..context import RequestContext
from ..views import view
from .common import OPERATORS, checked_name, done, form_text, services

USER_ROLES = frozenset({roles.USER})


def _confirmed(ctx: RequestContext) -> None:
    if form_text(ctx, "confirm") != "yes":
        raise errors.BadRequest("tick the box to confirm: this changes the card's certificates")


def _transition(ctx: RequestContext, serial: str, name: str, comment: str | None) -> cards.TransitionResult:
    """Confirmed by the tick box; the lifecycle decides whether this person in this role may."""
    _confirmed(ctx)
    svc = services(ctx)
    return cards.transition(svc.db, svc.ca, svc.config.cards.lifecycle, serial, name, actor=ctx.login,
                            role=ctx.role or "", workflows=svc.workflows, comment=comment)


@view("/console/cards/<serial>/transition", methods=("POST",), roles=OPERATORS, needs="console")
def console_card_transition(ctx: RequestContext, serial: str) -> Response:
    serial = checked_name(serial, "card")
    result = _transition(ctx, serial, form_text(ctx, "transition"), form_text(ctx, "comment"))
    return done(ctx, f"Card {serial} is now {result.status}; certificates changed: {len(result.certificates)}.",
                "console_card", {"status": result.status, "certificates": list(result.certificates)},
                serial=serial)


@view("/certificates/cards/<serial>/lost", methods=("POST",), roles=USER_ROLES, needs="console")
def my_card_lost(ctx: RequestContext, serial: str) -> Response:
    """The owner reports their own card lost: its certificates are revoked at once (keyCompromise)."""
    serial = checked_name(serial, "card")
    result = _transition(ctx, serial, "lost", "reported lost by its owner")
    ctx.flash(f"Card {serial} is blocked: its {len(result.certificates)} certificate(s) are revoked. "
              "Ask the help desk for a new card.")
    return redirect(ctx.url_for("my_certificates"), code=303)


@view("/certificates/cards/<serial>/transition", methods=("POST",), roles=USER_ROLES, needs="console")
def my_card_transition(ctx: RequestContext, serial: str) -> Response:
    """Another transition the lifecycle lets the owner make on their own card (``owner_may``)."""
    serial = checked_name(serial, "card")
    result = _transition(ctx, serial, form_text(ctx, "transition"), "by its owner")
    ctx.flash(f"Card {serial} is now {result.status}; certificates changed: {len(result.certificates)}.")
    return redirect(ctx.url_for("my_certificates"), code=303)
