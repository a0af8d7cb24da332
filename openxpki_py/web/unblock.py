"""PIN unblock pages: the owner's "PIN blocked?" (``/certificates/cards/<serial>/unblock``), the unblock's
own page (``/unblock/<id>``: code, card and phrase to confirm, result), and the operator's start on the
console's card page.  What may be done is :mod:`openxpki_py.unblock.service`; this reads forms and renders.
"""

from __future__ import annotations

from typing import Any

from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from .. import roles
from ..unblock.service import PinUnblockService
from . import errors
from .console.common import OPERATORS, checked_name, done, form_text
from .context import RequestContext
from .views import view

USER_ROLES = frozenset({roles.USER})


def _service(ctx: RequestContext) -> PinUnblockService:
    service: PinUnblockService | None = ctx.app.unblock
    assert service is not None  # the views say needs="unblock"
    return service


def _render(ctx: RequestContext, wf: Any, *, code: str | None = None) -> Response:
    page = _service(ctx).page(wf)
    server_url = ctx.app.web.public_url or ctx.request.host_url.rstrip("/") + ctx.request.script_root
    command = f"openxpki-py-token unblock --server {server_url} --code {code}"
    if server_url.startswith("http://"):  # demo / test sites on localhost only; the agent refuses others
        command += " --insecure-http-for-localhost"
    return ctx.render("unblock.mako", workflow=wf, page=page, code=code, agent_command=command,
                      code_minutes=_service(ctx).limits.code_lifetime // 60,
                      base_url=ctx.url_for("pin_unblock_page", wf_id=wf.id))


@view("/certificates/cards/<serial>/unblock", methods=("POST",), roles=USER_ROLES, needs="unblock")
def my_card_unblock(ctx: RequestContext, serial: str) -> Response:
    """The owner asks to unblock their card's PIN (SSO says who they are; the workflow checks the card)."""
    wf = _service(ctx).start(checked_name(serial, "card"), actor=ctx.login, role=ctx.role or roles.USER)
    if wf.state == "REFUSED":  # not the user's card, not active, too many unblocks: said on their page
        ctx.flash(f"The PIN of card {serial} cannot be unblocked here: {wf.context['failure']['message']}")
        return redirect(ctx.url_for("my_certificates"), code=303)
    return redirect(ctx.url_for("pin_unblock_page", wf_id=wf.id), code=303)


@view("/unblock/<int:wf_id>", roles=USER_ROLES, needs="unblock")
def pin_unblock_page(ctx: RequestContext, wf_id: int) -> Response:
    return _render(ctx, _service(ctx).own(wf_id, ctx.login))


@view("/unblock/<int:wf_id>/code", methods=("POST",), roles=USER_ROLES, needs="unblock")
def pin_unblock_code(ctx: RequestContext, wf_id: int) -> Response:
    """A one-time code for the agent, shown in this answer only (only its hash is stored)."""
    wf, code = _service(ctx).new_code(wf_id, ctx.login)
    if code is None:
        return redirect(ctx.url_for("pin_unblock_page", wf_id=wf_id), code=303)
    return _render(ctx, wf, code=code)


@view("/unblock/<int:wf_id>/action", methods=("POST",), roles=USER_ROLES, needs="unblock")
def pin_unblock_action(ctx: RequestContext, wf_id: int) -> Response:
    try:
        version = int(form_text(ctx, "version"))
        agent = int(form_text(ctx, "agent")) if form_text(ctx, "agent") else None
    except ValueError:
        raise errors.BadRequest("the form lacks the workflow version; reload the page") from None
    _service(ctx).act(wf_id, ctx.login, form_text(ctx, "action"), role=ctx.role or roles.USER, version=version,
                      agent=agent)
    return redirect(ctx.url_for("pin_unblock_page", wf_id=wf_id), code=303)


@view("/console/cards/<serial>/unblock", methods=("POST",), roles=OPERATORS, needs="unblock")
def console_card_unblock(ctx: RequestContext, serial: str) -> Response:
    """The help desk starts a PIN unblock for the card's owner, who then runs the agent from their page."""
    serial = checked_name(serial, "card")
    wf = _service(ctx).start(serial, actor=ctx.login, role=ctx.role or "", reason=form_text(ctx, "reason") or None)
    if wf.state == "REFUSED":
        message = f"PIN unblock {wf.id} for card {serial} was refused: {wf.context['failure']['message']}"
    else:
        message = (f"PIN unblock {wf.id} for card {serial} started: ask {wf.context.get('owner')} to open "
                   "\"My certificates\" and follow \"Unblock PIN\" there.")
    return done(ctx, message, "console_card", {"workflow_id": wf.id, "state": wf.state}, serial=serial)
