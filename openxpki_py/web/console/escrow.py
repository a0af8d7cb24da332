"""Escrowed keys in the console (``/console/escrow…``): records, recovery requests, approvals, the release.

Operators and Key Recovery Officers see the records (never key material)
and the requests; only a Key Recovery Officer asks, approves or releases,
and each change is one call of :mod:`openxpki_py.escrow.recovery`, where
four eyes are enforced (two different persons, never the key's owner) and
every step is audited.  The release gives the officer nothing: the key
waits for its owner, who collects it on "My certificates" (:mod:`..recovered`);
these pages show when it was released and when collected, never the key.
"""

from __future__ import annotations

from werkzeug.wrappers import Response

from ... import roles
from ...console import escrow as service
from ...errors import PolicyViolation
from ...escrow import recovery as recovery_service
from .. import errors
from ..context import RequestContext
from ..views import view
from .common import OPERATORS, checked_name, done, form_text, json_answer, query_text, services, wants_json

OFFICERS = frozenset({roles.KEY_RECOVERY_OFFICER})
VIEWERS = OPERATORS | OFFICERS


@view("/console/escrow", roles=VIEWERS, needs="console")
def console_escrow(ctx: RequestContext) -> Response:
    """All escrow records (or one person's, ``?owner=``) and the open recovery requests."""
    svc = services(ctx)
    owner = query_text(ctx, "owner") or None
    records = service.records(svc.db, checked_name(owner, "person") if owner else None)
    pending = service.recoveries(svc.db, svc.workflows)
    if wants_json(ctx):
        return json_answer({"records": records, "recoveries": [r.as_json() for r in pending]})
    return ctx.render("console/escrow.mako", records=records, owner=owner, pending=pending,
                      officer=ctx.role == roles.KEY_RECOVERY_OFFICER, message=ctx.take_flash())


@view("/console/escrow/<int:escrow_id>", roles=VIEWERS, needs="console")
def console_escrow_record(ctx: RequestContext, escrow_id: int) -> Response:
    svc = services(ctx)
    record = service.record(svc.db, escrow_id)
    asked = service.recoveries(svc.db, svc.workflows, open_only=False, escrow_id=escrow_id)
    if wants_json(ctx):
        return json_answer({"record": record, "recoveries": [r.as_json() for r in asked]})
    return ctx.render("console/escrow_record.mako", record=record, recoveries=asked,
                      officer=ctx.role == roles.KEY_RECOVERY_OFFICER, message=ctx.take_flash())


@view("/console/escrow/<int:escrow_id>/recover", methods=("POST",), roles=OFFICERS, needs="console")
def console_escrow_recover(ctx: RequestContext, escrow_id: int) -> Response:
    """Ask for a recovery; the reason is required (the workflow refuses an empty one)."""
    svc = services(ctx)
    service.record(svc.db, escrow_id)  # no such record: "not found", not a refused workflow
    wf = recovery_service.request_recovery(svc.workflows, escrow_id, reason=form_text(ctx, "reason"),
                                           actor=ctx.login)
    if wf.state != "PENDING_APPROVAL":  # refused by the workflow's check (and audited there)
        raise PolicyViolation(f"recovery request {wf.id} was refused: {wf.last_error or wf.state}",
                              code="recovery.refused")
    return done(ctx, f"Recovery request {wf.id} is waiting for two Key Recovery Officers.",
                "console_escrow_record", {"id": wf.id, "state": wf.state}, escrow_id=escrow_id)


@view("/console/escrow/recoveries/<int:wf_id>/approve", methods=("POST",), roles=OFFICERS, needs="console")
def console_recovery_approve(ctx: RequestContext, wf_id: int) -> Response:
    svc = services(ctx)
    request = service.recovery(svc.workflows, wf_id)
    wf = recovery_service.approve_recovery(svc.workflows, wf_id, actor=ctx.login,
                                           comment=form_text(ctx, "comment") or None)
    count = len(wf.context.get("approvals", []))
    return done(ctx, f"Recovery request {wf_id}: {count} of {request.approvals_required} approvals ({wf.state}).",
                "console_escrow_record", {"id": wf_id, "state": wf.state, "approvals": count},
                escrow_id=request.escrow_id)


@view("/console/escrow/recoveries/<int:wf_id>/release", methods=("POST",), roles=OFFICERS, needs="console")
def console_recovery_release(ctx: RequestContext, wf_id: int) -> Response:
    """Hand the approved recovery to the key's owner; the officer receives nothing of the key."""
    if form_text(ctx, "confirm") != "yes":
        raise errors.BadRequest("tick the box to confirm the release to the key's owner")
    svc = services(ctx)
    request = service.recovery(svc.workflows, wf_id)
    wf = recovery_service.release_recovered_key(svc.workflows, wf_id, actor=ctx.login)
    until = f" until {wf.wake_at:%Y-%m-%d %H:%M} UTC" if wf.wake_at else ""
    return done(ctx, f"Recovery request {wf_id} is released to {request.owner}, who collects the key on "
                f"\"My certificates\"{until}.", "console_escrow_record",
                {"id": wf_id, "state": wf.state, "owner": request.owner, "collect_by": wf.wake_at},
                escrow_id=request.escrow_id)


@view("/console/escrow/recoveries/<int:wf_id>/withdraw", methods=("POST",), roles=OFFICERS, needs="console")
def console_recovery_withdraw(ctx: RequestContext, wf_id: int) -> Response:
    """Take a release back before its owner collected it; the reason is required and audited."""
    reason = form_text(ctx, "reason").strip()
    if not reason:
        raise errors.BadRequest("give the reason for the withdrawal: it is kept in the audit trail")
    svc = services(ctx)
    request = service.recovery(svc.workflows, wf_id)
    wf = recovery_service.withdraw_recovery(svc.workflows, wf_id, actor=ctx.login, reason=reason)
    return done(ctx, f"Recovery request {wf_id} is withdrawn: {request.owner} can no longer collect the key.",
                "console_escrow_record", {"id": wf_id, "state": wf.state}, escrow_id=request.escrow_id)
