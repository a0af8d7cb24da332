"""The personalization page: from the menu (``/personalize``) and from the
``/token`` deep link (``/deeplink/workflow/<id>``, without menu).

The page follows the workflow: JavaScript polls ``…/status`` and reloads
when the workflow's version changes; without JavaScript a refresh link does
the same.  The enrollment code is shown once, in the answer to the POST that
made it: only its hash is stored, and a reload never shows an old code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ..db.schema import certificate
from ..errors import NotFound as RecordNotFound
from ..personalization.enrollment import new_enrollment_code
from ..personalization.tasks import WF_TYPE, page_progress
from . import errors
from .api import json_response
from .context import RequestContext
from .views import view

USER_ROLES = frozenset({"User"})
PAGE_ACTIONS = ("confirm_token", "reject_token", "cancel")
WITHDRAW = "withdraw"  # on the issuance child waiting for approval: cancels the personalization
# Where the page offers an enrollment code: before a card was found, and
# while the agent still has work to do (to replace an agent that stopped).
CODE_STATES = ("WAIT_FOR_TOKEN", "WAIT_FOR_CSR", "ISSUING", "WAIT_FOR_INSTALL")


@dataclass(frozen=True)
class CertificateRow:
    cert_type: str
    status: str
    serial: str
    subject: str
    not_before: datetime
    not_after: datetime


class Personalization:
    """What the pages need: the engine, the store, the policy."""

    def __init__(self, *, engine: Any, db: Any, policy: Any) -> None:
        self.engine = engine
        self.db = db
        self.policy = policy

    def open_or_start(self, login: str) -> Any:
        """The user's unfinished personalization, or a new one: reloading /token never piles them up."""
        for summary in self.engine.search(wf_type=WF_TYPE, owner=login, limit=20):
            if summary.proc_state not in ("finished", "failed") and summary.creator == login:
                return summary
        return self.engine.start(WF_TYPE, actor=login, role="User")

    def own(self, wf_id: int, login: str) -> Any:
        try:
            wf = self.engine.get(wf_id)
        except RecordNotFound:
            raise errors.PageNotFound() from None
        if wf.wf_type != WF_TYPE or wf.creator != login:  # not yours: do not even confirm it exists
            raise errors.PageNotFound()
        return wf

    def certificates(self, wf: Any) -> list[CertificateRow]:
        entries = [e for e in wf.context.get("certificates") or [] if e.get("serial")]
        if not entries:
            return []
        with self.db.connect() as conn:
            rows = {r["serial"]: r for r in conn.execute(
                select(certificate).where(certificate.c.serial.in_([e["serial"] for e in entries]),
                                          certificate.c.owner == wf.creator)).mappings()}
        return [CertificateRow(e["type"], e["status"], e["serial"], rows[e["serial"]]["subject"],
                               rows[e["serial"]]["not_before"], rows[e["serial"]]["not_after"])
                for e in entries if e["serial"] in rows]


def _service(ctx: RequestContext) -> Personalization:
    service: Personalization | None = ctx.app.personalization
    assert service is not None
    return service


def render_personalization(ctx: RequestContext, wf: Any, *, deep_link: bool, code: str | None = None,
                           message: str | None = None) -> Response:
    service = _service(ctx)
    children: Sequence[Any] = service.engine.children(wf.id) if wf.state == "ISSUING" else ()
    progress = page_progress(wf, children)
    page = "deep_link_workflow" if deep_link else "personalization_page"
    server_url = ctx.app.web.public_url or ctx.request.host_url.rstrip("/") + ctx.request.script_root
    agent_command = f"openxpki-py-token enroll --server {server_url} --code {code}"
    if server_url.startswith("http://"):  # demo / test sites on localhost only; the agent refuses others
        agent_command += " --insecure-http-for-localhost"
    return ctx.render(
        "personalization.mako", hide_menu=deep_link, workflow=wf, progress=progress, code=code, message=message,
        code_minutes=service.policy.enrollment.code_lifetime // 60,
        agent_command=agent_command,
        page_url=ctx.url_for(page, wf_id=wf.id), mode="deeplink" if deep_link else "menu",
        # forms, status and downloads live under /personalize/<id> for both modes
        base_url=ctx.url_for("personalization_page", wf_id=wf.id),
        certificates=service.certificates(wf) if wf.state == "SUCCESS" else [],
        code_offered=wf.state in CODE_STATES,
        actions=[a for a in PAGE_ACTIONS if a in {x.name for x in wf.available_actions("User")}]
        + ([WITHDRAW] if progress.phase == "approval" else []),
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
    """A new one-time code (earlier codes and agents stop working), shown in this answer only.

    Also after the card was confirmed: an agent whose credential ran out (a
    long approval, a reboot) continues with a new code; the server then
    insists on the same card.
    """
    service = _service(ctx)
    wf = service.own(wf_id, ctx.login)
    if wf.state not in CODE_STATES:
        return redirect(_back(ctx, wf_id), code=303)
    with service.db.begin() as conn:
        code = new_enrollment_code(conn, workflow_id=wf_id, login=ctx.login, limits=service.policy.enrollment,
                                   now=datetime.now(timezone.utc))
    return render_personalization(ctx, wf, deep_link=ctx.request.form.get("mode") == "deeplink", code=code)


@view("/personalize/<int:wf_id>/action", methods=("POST",), roles=USER_ROLES, needs="personalization")
def personalization_action(ctx: RequestContext, wf_id: int) -> Response:
    """The user's own steps: confirm or reject the card the agent found, cancel."""
    service = _service(ctx)
    service.own(wf_id, ctx.login)
    action = ctx.request.form.get("action", "")
    if action == WITHDRAW:
        return _withdraw(ctx, service, wf_id)
    if action not in PAGE_ACTIONS:
        raise errors.BadRequest("unknown action")
    try:
        version = int(ctx.request.form.get("version", ""))
    except ValueError:
        raise errors.BadRequest("the form lacks the workflow version; reload the page") from None
    inputs = {"reason": "cancelled by the user"} if action == "cancel" else {}
    service.engine.execute(wf_id, action, actor=ctx.login, role=ctx.role or "User", inputs=inputs,
                           expected_version=version)
    return redirect(_back(ctx, wf_id), code=303)


def _withdraw(ctx: RequestContext, service: Personalization, wf_id: int) -> Response:
    """Waiting for an approval nobody gives: take the request back, which fails the personalization."""
    wf = service.own(wf_id, ctx.login)
    if wf.state != "ISSUING":
        raise errors.Conflict("there is no request waiting for approval any more; reload the page")
    child_id = wf.context["certificates"][wf.context["current"]]["child_id"]
    service.engine.execute(child_id, WITHDRAW, actor=ctx.login, role=ctx.role or "User")
    return redirect(_back(ctx, wf_id), code=303)


@view("/personalize/<int:wf_id>/status", roles=USER_ROLES, needs="personalization")
def personalization_status(ctx: RequestContext, wf_id: int) -> Response:
    wf = _service(ctx).own(wf_id, ctx.login)
    return json_response({"version": wf.version, "state": wf.state, "proc_state": wf.proc_state})


@view("/personalize/<int:wf_id>/certificate/<serial>.pem", roles=USER_ROLES, needs="personalization")
def personalization_certificate(ctx: RequestContext, wf_id: int, serial: str) -> Response:
    from .mine import certificate_download

    service = _service(ctx)
    wf = service.own(wf_id, ctx.login)
    if serial not in {c.serial for c in service.certificates(wf)}:
        raise errors.PageNotFound()
    return certificate_download(service.db, serial, ctx.login)
