"""Stuck work: the queue, and retry / fail with a comment (``/console/stuck``)."""

from __future__ import annotations

from werkzeug.wrappers import Response

from ...console import search, stuck
from ..context import RequestContext
from ..views import view
from .common import OPERATORS, done, form_text, json_answer, services, wants_json


@view("/console/stuck", roles=OPERATORS, needs="console")
def console_stuck(ctx: RequestContext) -> Response:
    queue = stuck.stuck_workflows(services(ctx).db, search.page_number(ctx.request.args.get("page")))
    if wants_json(ctx):
        return json_answer({"workflows": [dict(r) for r in queue.items], "has_next": queue.has_next})
    return ctx.render("console/stuck.mako", queue=queue, message=ctx.take_flash())


@view("/console/workflows/<int:wf_id>/retry", methods=("POST",), roles=OPERATORS, needs="console")
def console_workflow_retry(ctx: RequestContext, wf_id: int) -> Response:
    svc = services(ctx)
    wf = stuck.retry(svc.db, svc.workflows, wf_id, actor=ctx.login, role=ctx.role or "",
                     comment=form_text(ctx, "comment"))
    return done(ctx, f"Workflow {wf_id} retried: now {wf.state} ({wf.proc_state}).", "console_workflow",
                {"id": wf.id, "state": wf.state, "proc_state": wf.proc_state}, wf_id=wf_id)


@view("/console/workflows/<int:wf_id>/fail", methods=("POST",), roles=OPERATORS, needs="console")
def console_workflow_fail(ctx: RequestContext, wf_id: int) -> Response:
    svc = services(ctx)
    wf = stuck.fail(svc.db, svc.workflows, wf_id, actor=ctx.login, role=ctx.role or "",
                    comment=form_text(ctx, "comment"))
    return done(ctx, f"Workflow {wf_id} ended as failed ({wf.state}).", "console_workflow",
                {"id": wf.id, "state": wf.state, "proc_state": wf.proc_state}, wf_id=wf_id)
