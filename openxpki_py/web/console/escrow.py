"""Escrowed keys in the console (``/console/escrow…``): records, recovery requests, approvals, the release.

Operators and Key Recovery Officers see the records (never key material)
and the requests; only a Key Recovery Officer asks, approves or releases,
and each change is one call of :mod:`openxpki_py.escrow.recovery`, where
four eyes are enforced (two different persons, never the key's owner) and
every step is audited.  The release answers the PKCS#12 and its one-time
password in this one response only (``Cache-Control: no-store``), as the
CLI prints them once: nothing of it is stored to be shown again.
"""

from __future__ import annotations

import base64

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
    """The approved key as PKCS#12, with its one-time password: shown in this answer once, never again."""
    if form_text(ctx, "confirm") != "yes":
        raise errors.BadRequest("tick the box to confirm: the key is released once, with its password")
    svc = services(ctx)
    request = service.recovery(svc.workflows, wf_id)
    released = recovery_service.release_recovered_key(svc.workflows, wf_id, actor=ctx.login)
    pkcs12 = base64.b64encode(released.pkcs12).decode()
    if wants_json(ctx):
        response = json_answer({"owner": released.owner, "pkcs12": pkcs12, "password": released.password})
    else:
        response = ctx.render("console/escrow_released.mako", owner=released.owner, pkcs12=pkcs12,
                              password=released.password, escrow_id=request.escrow_id, wf_id=wf_id)
    response.headers["Cache-Control"] = "no-store"
    return response
