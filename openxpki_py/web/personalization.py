"""The personalization page: from the menu (``/personalize``) and from the
``/token`` deep link (``/deeplink/workflow/<id>``, without menu).

The page follows the workflow: JavaScript polls ``…/status`` and reloads
when the workflow's version changes; without JavaScript a refresh link does
the same.  The enrollment code is shown once, in the answer to the POST that
made it: only its hash is stored, and a reload never shows an old code.  It
reaches the agent through an ``openxpki-py-token:`` link (the agent's URL
handler), or typed; when the page is left, a beacon ends the unused code
(best effort: its short life and single use are the real bound).
What the user may do and what each step does is
:mod:`openxpki_py.personalization.service`; this module reads the form,
calls it and renders.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime, timezone
from typing import Any

from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from .. import roles
from ..personalization.service import (
    AGENT_ACTIONS,
    PAGE_ACTIONS,
    WITHDRAW,
    PersonalizationService,
    agent_marker_of,
)
from . import errors
from .api import json_response
from .context import RequestContext
from .mine import pem_download
from .views import view

USER_ROLES = frozenset({roles.USER})


def _service(ctx: RequestContext) -> PersonalizationService:
    service: PersonalizationService | None = ctx.app.personalization
    assert service is not None
    return service


def render_personalization(ctx: RequestContext, wf: Any, *, deep_link: bool, code: str | None = None,
                           message: str | None = None) -> Response:
    service = _service(ctx)
    page = service.page(wf)
    endpoint = "deep_link_workflow" if deep_link else "personalization_page"
    server_url = ctx.app.web.public_url or ctx.request.host_url.rstrip("/") + ctx.request.script_root
    agent_command = f"openxpki-py-token enroll --server {server_url} --code {code}"
    if server_url.startswith("http://"):  # demo / test sites on localhost only; the agent refuses others
        agent_command += " --insecure-http-for-localhost"
    # The agent's URL handler (openxpki-py-token register-handler) takes this
    # link: the code reaches the agent without being typed or read aloud.
    agent_link = "openxpki-py-token:enroll?" + urllib.parse.urlencode({"server": server_url, "code": code or ""})
    return ctx.render(
        "personalization.mako", hide_menu=deep_link, workflow=wf, progress=page.progress, code=code,
        message=message, code_minutes=service.policy.enrollment.code_lifetime // 60,
        agent_command=agent_command, agent_link=agent_link, pairing=page.pairing, server_url=server_url,
        agent_marker=agent_marker_of(page.pairing),
        page_url=ctx.url_for(endpoint, wf_id=wf.id), mode="deeplink" if deep_link else "menu",
        # forms, status and downloads live under /personalize/<id> for both modes
        base_url=ctx.url_for("personalization_page", wf_id=wf.id),
        certificates=page.certificates, code_offered=page.code_offered, actions=page.actions,
        now=datetime.now(timezone.utc),
    )


def _back(ctx: RequestContext, wf_id: int) -> str:
    deep = ctx.request.form.get("mode") == "deeplink"
    return ctx.url_for("deep_link_workflow" if deep else "personalization_page", wf_id=wf_id)


@view("/personalize", roles=USER_ROLES, needs="personalization")
def personalize(ctx: RequestContext) -> Response:
    wf = _service(ctx).open_or_start(ctx.login)
    return redirect(ctx.url_for("personalization_page", wf_id=wf.id), code=303)


@view("/personalize/<int:wf_id>", roles=USER_ROLES, needs="personalization")
def personalization_page(ctx: RequestContext, wf_id: int) -> Response:
    return render_personalization(ctx, _service(ctx).own(wf_id, ctx.login), deep_link=False)


@view("/personalize/<int:wf_id>/code", methods=("POST",), roles=USER_ROLES, needs="personalization")
def personalization_code(ctx: RequestContext, wf_id: int) -> Response:
    """A new one-time code, shown in this answer only (see PersonalizationService.new_code)."""
    wf, code = _service(ctx).new_code(wf_id, ctx.login)
    if code is None:
        return redirect(_back(ctx, wf_id), code=303)
    return render_personalization(ctx, wf, deep_link=ctx.request.form.get("mode") == "deeplink", code=code)


@view("/personalize/<int:wf_id>/action", methods=("POST",), roles=USER_ROLES, needs="personalization")
def personalization_action(ctx: RequestContext, wf_id: int) -> Response:
    """The user's own steps: confirm or reject the card the agent found, cancel, withdraw."""
    service = _service(ctx)
    service.own(wf_id, ctx.login)
    action = ctx.request.form.get("action", "")
    role = ctx.role or roles.USER
    if action == WITHDRAW:  # acts on the issuance child, whose version the page does not show
        service.withdraw(wf_id, ctx.login, role=role)
        return redirect(_back(ctx, wf_id), code=303)
    if action not in PAGE_ACTIONS and action not in AGENT_ACTIONS:
        raise errors.BadRequest("unknown action")
    try:
        version = int(ctx.request.form.get("version", ""))
        # The agent whose pairing phrase the page showed: a click answers for it alone.
        agent = int(ctx.request.form["agent"]) if ctx.request.form.get("agent") else None
    except ValueError:
        raise errors.BadRequest("the form lacks the workflow version; reload the page") from None
    service.act(wf_id, ctx.login, action, role=role, version=version, agent=agent)
    return redirect(_back(ctx, wf_id), code=303)


@view("/personalize/<int:wf_id>/code/discard", methods=("POST",), roles=USER_ROLES, needs="personalization")
def personalization_code_discard(ctx: RequestContext, wf_id: int) -> Response:
    """The page that showed a code is being left (``pagehide`` beacon): the unused code ends."""
    _service(ctx).discard_codes(wf_id, ctx.login)
    return Response(status=204)


@view("/personalize/<int:wf_id>/status", roles=USER_ROLES, needs="personalization")
def personalization_status(ctx: RequestContext, wf_id: int) -> Response:
    wf = _service(ctx).own(wf_id, ctx.login)
    return json_response({"version": wf.version, "state": wf.state, "proc_state": wf.proc_state,
                          "agent": _service(ctx).agent_marker(wf)})


@view("/personalize/<int:wf_id>/certificate/<serial>.pem", roles=USER_ROLES, needs="personalization")
def personalization_certificate(ctx: RequestContext, wf_id: int, serial: str) -> Response:
    return pem_download(_service(ctx).certificate_der(wf_id, serial, ctx.login), serial)
