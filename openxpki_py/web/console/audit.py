"""The searchable audit log and its export (``/console/audit``); Verify chain stays ``/audit/verify``."""

from __future__ import annotations

from werkzeug.wrappers import Response

from ...console import auditlog, search
from ..context import RequestContext
from ..views import view
from .common import OPERATORS, json_answer, query_text, services, wants_json


@view("/console/audit", roles=OPERATORS, needs="console")
def console_audit(ctx: RequestContext) -> Response:
    flt = _filter(ctx)
    found = auditlog.search(services(ctx).db, flt, search.page_number(ctx.request.args.get("page")))
    if wants_json(ctx):
        return json_answer({"rows": [{k: r[k] for k in auditlog.COLUMNS} for r in found.items],
                            "has_next": found.has_next})
    return ctx.render("console/audit.mako", rows=found, flt=flt, args=ctx.request.args,
                      message=ctx.take_flash())


@view("/console/audit/export", roles=OPERATORS, needs="console")
def console_audit_export(ctx: RequestContext) -> Response:
    fmt = ctx.request.args.get("format", "csv")
    flt = _filter(ctx)
    body = auditlog.export(services(ctx).db, flt, fmt, actor=ctx.login, role=ctx.role or "")
    response = Response(body, mimetype=auditlog.FORMATS[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="audit.{fmt}"'
    return response


def _filter(ctx: RequestContext) -> auditlog.AuditFilter:
    return auditlog.AuditFilter.from_args({name: query_text(ctx, name) for name in auditlog.FILTER_FIELDS})
