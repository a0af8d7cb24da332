"""RA Operators' page: certificate requests waiting for approval.

Lists ``certificate_issuance`` workflows in PENDING_APPROVAL with what an
operator decides on (owner, profile, subject from the directory, key, who
approved already) and offers Approve (with a comment) and Reject (with a
reason).  Every decision carries the version the operator saw: a request
that changed meanwhile is refused with "reload".
"""

from __future__ import annotations

from typing import Any

from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from .. import roles
from ..workflow.errors import ActivityFailed
from . import errors
from .context import RequestContext
from .errors import error_answer
from .views import view

RA_ROLES = frozenset({roles.RA_OPERATOR})
WF_TYPE = "certificate_issuance"
PENDING = "PENDING_APPROVAL"


def _engine(ctx: RequestContext) -> Any:
    service = ctx.app.personalization
    assert service is not None
    return service.engine


def _pending(engine: Any) -> list[Any]:
    """The requests waiting, with their contexts: a constant number of queries, however many wait."""
    return list(engine.get_many([s.id for s in engine.search(wf_type=WF_TYPE, state=PENDING, limit=200)]))


@view("/approvals", roles=RA_ROLES, needs="personalization")
def approvals(ctx: RequestContext) -> Response:
    return ctx.render("approvals.mako", pending=_pending(_engine(ctx)), message=ctx.take_flash())


@view("/approvals/<int:wf_id>", methods=("POST",), roles=RA_ROLES, needs="personalization")
def approval_decision(ctx: RequestContext, wf_id: int) -> Response:
    engine = _engine(ctx)
    decision = ctx.request.form.get("decision", "")
    try:
        version = int(ctx.request.form.get("version", ""))
    except ValueError:
        raise errors.BadRequest("the form lacks the request's version; reload the page") from None
    text = ctx.request.form.get("text", "").strip()
    if decision == "approve":
        inputs = {"comment": text} if text else {}
    elif decision == "reject":
        if not text:
            raise errors.BadRequest("a rejection needs a reason the requester will read")
        inputs = {"rejection": text}
    else:
        raise errors.BadRequest("unknown decision")
    wf = engine.get(wf_id)
    if wf.wf_type != WF_TYPE:
        raise errors.PageNotFound()
    try:
        engine.execute(wf_id, decision, actor=ctx.login, role=ctx.role or "", inputs=inputs,
                       expected_version=version)
    except ActivityFailed as exc:  # e.g. approving one's own request: the operator reads why, on the list
        return ctx.render("approvals.mako", status=error_answer(exc).status,
                          message=f"Request {wf_id}: {exc.message}", pending=_pending(engine))
    ctx.flash(f"Request {wf_id}: {decision}d.")
    return redirect(ctx.url_for("approvals"), code=303)
