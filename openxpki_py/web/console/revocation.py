"""Certificate page, revocation with a confirmation step, holds, and the CRL (``/console/certificates``, ``/console/crl``)."""

from __future__ import annotations

from werkzeug.wrappers import Response

from ...console import policy
from ...console import revocation as service
from ...db.schema import token
from .. import errors
from ..context import RequestContext
from ..mine import pem_download
from ..views import view
from .common import OPERATORS, checked_serial, done, form_text, json_answer, services, wants_json


@view("/console/certificates/<serial>", roles=OPERATORS, needs="console")
def console_certificate(ctx: RequestContext, serial: str) -> Response:
    from sqlalchemy import select

    row = service.find(services(ctx).db, checked_serial(serial))
    if wants_json(ctx):
        return json_answer(service.certificate_json(row))
    card = None
    if row["token_id"] is not None:
        with services(ctx).db.connect() as conn:
            card = conn.execute(select(token).where(token.c.id == row["token_id"])).mappings().first()
    return ctx.render("console/certificate.mako", cert=row, card=card, reasons=service.OPERATOR_REASONS,
                      may_revoke=policy.may(ctx.role, "cert.revoke"), message=ctx.take_flash())


@view("/console/certificates/<serial>/pem", roles=OPERATORS, needs="console")
def console_certificate_pem(ctx: RequestContext, serial: str) -> Response:
    row = service.find(services(ctx).db, checked_serial(serial))
    return pem_download(bytes(row["der"]), row["serial"])


@view("/console/certificates/<serial>/revoke", methods=("GET", "POST"), roles=OPERATORS, needs="console")
def console_revoke(ctx: RequestContext, serial: str) -> Response:
    """GET: the confirmation page for the chosen reason; POST (``confirm=yes``): revoke."""
    svc = services(ctx)
    if ctx.request.method == "GET":
        row = service.find(svc.db, checked_serial(serial))
        reason = ctx.request.args.get("reason", "")
        if reason not in service.OPERATOR_REASONS:
            raise errors.BadRequest("choose a revocation reason")
        comment = service.clean_comment(ctx.request.args.get("comment", ""))
        return ctx.render("console/revoke_confirm.mako", cert=row, reason=reason, comment=comment or "",
                          hold=reason == service.HOLD)
    if form_text(ctx, "confirm") != "yes":
        raise errors.BadRequest("the revocation was not confirmed")
    reason = form_text(ctx, "reason")
    row = service.revoke(svc.db, svc.ca, checked_serial(serial), reason, actor=ctx.login, role=ctx.role or "",
                         comment=form_text(ctx, "comment"))
    what = "put on hold" if reason == service.HOLD else f"revoked ({reason})"
    return done(ctx, f"Certificate {row['serial']} {what}. The next CRL lists it; OCSP answers so now.",
                "console_certificate", service.certificate_json(row), serial=row["serial"])


@view("/console/certificates/<serial>/release-hold", methods=("POST",), roles=OPERATORS, needs="console")
def console_release_hold(ctx: RequestContext, serial: str) -> Response:
    svc = services(ctx)
    row = service.release_hold(svc.db, svc.ca, checked_serial(serial), actor=ctx.login, role=ctx.role or "",
                               comment=form_text(ctx, "comment"))
    return done(ctx, f"Certificate {row['serial']} is valid again (hold released); the next CRL leaves it out.",
                "console_certificate", service.certificate_json(row), serial=row["serial"])


@view("/console/crl", methods=("GET", "POST"), roles=OPERATORS, needs="console")
def console_crl(ctx: RequestContext) -> Response:
    svc = services(ctx)
    if ctx.request.method == "POST":
        issued, written = service.issue_crl_now(svc.db, svc.ca, actor=ctx.login, role=ctx.role or "")
        return done(ctx, f"CRL number {issued.number} issued with {issued.revoked} entries"
                    + (" and published." if written else " (no publish_dir is configured)."),
                    "console_crl", {"number": issued.number, "entries": issued.revoked})
    status = service.crl_status(svc.db, svc.ca)
    if wants_json(ctx):
        return json_answer(status.as_json() if status is not None else None)
    return ctx.render("console/crl.mako", crl=status, may_issue=policy.may(ctx.role, "crl.issue"),
                      message=ctx.take_flash())


@view("/console/crl/current.crl", roles=OPERATORS, needs="console")
def console_crl_download(ctx: RequestContext) -> Response:
    svc = services(ctx)
    response = Response(service.current_crl_der(svc.db, svc.ca), mimetype="application/pkix-crl")
    response.headers["Content-Disposition"] = 'attachment; filename="current.crl"'
    return response
