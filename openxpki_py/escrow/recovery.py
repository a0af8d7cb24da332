"""``key_recovery``: two different Key Recovery Officers release an escrowed key; its owner collects it.

Four eyes compare persons (the canonical login the engine records as the
actor), not button presses: one officer approving twice counts once, and
the key's owner never approves a recovery of their own key.  The officers'
``release`` gives them nothing: it hands the recovery to the owner, who
collects it once, in their own session (:func:`collect_recovered_key`).
Only then is the key unsealed and the PKCS#12 built with a fresh one-time
password, in the action's transaction; both go to the owner's request in
memory and reach neither the database, the workflow context nor a log.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from .. import roles
from ..audit import append_audit
from ..db import certstore
from ..errors import NotFound, NotPermitted, PolicyViolation, WorkflowError
from ..workflow.context import ActivityContext
from ..workflow.errors import ActionNotAvailable
from ..workflow.registry import Registry
from .personalization import escrow_of
from .service import KeyEscrow

callables = Registry()

WF_TYPE = "key_recovery"
APPROVALS_REQUIRED = 2
READY_FOR_OWNER = "READY_FOR_OWNER"
WITHDRAWN = "WITHDRAWN"

# The collection hands its PKCS#12 to the caller of collect_recovered_key: the
# engine runs the action's activity in the caller's thread, so a thread-local
# carries it, never shared with another request.  The activity refuses to run
# for anyone else (a generic `workflow execute … collect` would only burn it).
_collecting = threading.local()


class RecoveryNotCollectable(WorkflowError):
    """The recovered key is not (or no longer) waiting for its owner: collected, expired or not released yet."""

    code = "recovery.not_collectable"


@dataclass(frozen=True)
class CollectedKey:
    """What the owner receives: the PKCS#12 and the password that opens it (shown once, to the owner only)."""

    owner: str
    cert_type: str
    pkcs12: bytes
    password: str


@dataclass(frozen=True)
class WaitingKey:
    """A released recovery as its owner sees it on "My certificates": no key material."""

    workflow_id: int
    escrow_id: int
    cert_type: str
    certificate_serial: str | None
    released_by: str
    collect_by: datetime | None


@callables.activity("check_recovery_request")
def check_recovery_request(ctx: ActivityContext) -> None:
    row = KeyEscrow.record(ctx.conn, int(ctx["escrow_id"]))
    if row["owner"] == ctx.creator:
        raise PolicyViolation("you cannot ask for the recovery of your own key; another Key Recovery "
                              "Officer must", code="recovery.own_key")
    ctx["owner"] = row["owner"]
    ctx["escrow"] = {"cert_type": row["cert_type"], "key_spec": row["key_spec"],
                     "public_key_sha256": row["public_key_sha256"], "status": row["status"],
                     "certificate_serial": row["certificate_serial"]}
    ctx["approvals_required"] = APPROVALS_REQUIRED
    ctx.set_attribute("owner", row["owner"])
    ctx.note = ctx.get("reason")


@callables.activity("record_recovery_approval")
def record_recovery_approval(ctx: ActivityContext) -> None:
    approvals = list(ctx.get("approvals", []))
    if ctx.actor == ctx["owner"]:
        raise PolicyViolation("the key's owner cannot approve its recovery", code="recovery.own_key")
    if any(a.get("by") == ctx.actor for a in approvals):
        raise PolicyViolation(f"{ctx.actor} has approved already; a different Key Recovery Officer must give "
                              "the next approval", code="approval.same_person")
    approvals.append({"by": ctx.actor, "at": ctx.now.isoformat(), "comment": ctx.inputs.get("comment")})
    ctx["approvals"] = approvals
    ctx.note = ctx.inputs.get("comment")
    ctx.context.pop("comment", None)


@callables.condition("recovery_approved")
def recovery_approved(ctx: ActivityContext) -> bool:
    return len({a["by"] for a in ctx.get("approvals", [])}) >= int(ctx.get("approvals_required",
                                                                             APPROVALS_REQUIRED))


@callables.activity("record_recovery_rejection")
def record_recovery_rejection(ctx: ActivityContext) -> None:
    ctx["rejection"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "reason": str(ctx.inputs["rejection"])}
    ctx.note = str(ctx.inputs["rejection"])


@callables.activity("record_recovery_expiry")
def record_recovery_expiry(ctx: ActivityContext) -> None:
    ctx["rejection"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "expired": True,
                        "reason": "nobody decided or released in time; ask again"}


@callables.activity("record_recovery_withdrawal")
def record_recovery_withdrawal(ctx: ActivityContext) -> None:
    """An officer takes a release back before the owner collected it (the owner was told wrongly, left …)."""
    reason = str(ctx.inputs.get("withdrawal") or "").strip()
    if not reason:
        raise PolicyViolation("give the reason for the withdrawal: it is kept in the audit trail",
                              code="recovery.reason_missing")
    ctx["withdrawn"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "reason": reason}
    ctx.note = reason
    _audit(ctx, "escrow.withdraw", reason=reason)


def _audit(ctx: ActivityContext, event: str, **extra: str) -> None:
    append_audit(ctx.conn, actor=ctx.actor, role=ctx.role, event=event,
                 target=str(ctx["escrow"]["public_key_sha256"]),
                 details={"escrow_id": int(ctx["escrow_id"]), "owner": ctx["owner"],
                          "recovery_workflow": ctx.workflow_id, **extra})


@callables.activity("release_escrowed_key")
def release_escrowed_key(ctx: ActivityContext) -> None:
    """Only after two approvals: the key waits for its owner; the officer gets nothing of it."""
    if not recovery_approved(ctx):
        raise PolicyViolation("two different Key Recovery Officers must approve first", code="recovery.unapproved")
    KeyEscrow.record(ctx.conn, int(ctx["escrow_id"]))  # still there
    ctx["released"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "to": ctx["owner"]}
    _audit(ctx, "escrow.release")


@callables.activity("collect_escrowed_key")
def collect_escrowed_key(ctx: ActivityContext) -> None:
    """The owner only: the key unsealed, as PKCS#12 with a fresh one-time password, into the hand-off."""
    if ctx.actor != ctx["owner"]:
        raise NotPermitted("only the key's owner collects a recovered key", code="recovery.not_owner")
    if getattr(_collecting, "workflow_id", None) != ctx.workflow_id:
        raise PolicyViolation("the owner collects a recovered key on \"My certificates\", which shows it",
                              code="recovery.collect_on_the_web")
    escrow = escrow_of(ctx.services)
    row = KeyEscrow.record(ctx.conn, int(ctx["escrow_id"]))
    cert_row = certstore.certificate_for_key(ctx.conn, row["public_key_sha256"])
    cert = x509.load_der_x509_certificate(bytes(cert_row["der"])) if cert_row is not None else None
    data, password = escrow.pkcs12_for_owner(ctx.conn, int(ctx["escrow_id"]), cert, actor=ctx.actor,
                                             role=ctx.role, recovery_workflow=ctx.workflow_id)
    ctx.secret_inputs = ctx.secret_inputs | {password}  # the engine refuses to keep it in the context or note
    _collecting.result = (data, password)
    ctx["collected"] = {"at": ctx.now.isoformat()}


@callables.activity("record_collection_expiry")
def record_collection_expiry(ctx: ActivityContext) -> None:
    ctx["expired"] = {"at": ctx.now.isoformat()}
    _audit(ctx, "escrow.collection_expired")


# --- the service functions the CLI and the web call --------------------------------------


def request_recovery(engine: Any, escrow_id: int, *, reason: str, actor: str) -> Any:
    """Start a recovery as a Key Recovery Officer; returns the workflow view."""
    return engine.start(WF_TYPE, actor=actor, role=roles.KEY_RECOVERY_OFFICER,
                        context={"escrow_id": escrow_id, "reason": reason})


def approve_recovery(engine: Any, workflow_id: int, *, actor: str, comment: str | None = None) -> Any:
    inputs = {"comment": comment} if comment else {}
    return engine.execute(workflow_id, "approve", actor=actor, role=roles.KEY_RECOVERY_OFFICER, inputs=inputs)


def release_recovered_key(engine: Any, workflow_id: int, *, actor: str) -> Any:
    """Run ``release``: the key now waits for its owner to collect it; returns the workflow view."""
    view = engine.execute(workflow_id, "release", actor=actor, role=roles.KEY_RECOVERY_OFFICER)
    if view.state != READY_FOR_OWNER:
        raise WorkflowError(f"recovery {workflow_id} did not release the key (state {view.state})",
                            code="recovery.not_released")
    return view


def withdraw_recovery(engine: Any, workflow_id: int, *, actor: str, reason: str) -> Any:
    """Run ``withdraw`` on a released, uncollected recovery; returns the workflow view."""
    view = engine.execute(workflow_id, "withdraw", actor=actor, role=roles.KEY_RECOVERY_OFFICER,
                          inputs={"withdrawal": reason})
    if view.state != WITHDRAWN:
        raise WorkflowError(f"recovery {workflow_id} was not withdrawn (state {view.state})",
                            code="recovery.not_withdrawn")
    return view


def waiting_for_owner(engine: Any, owner: str) -> list[WaitingKey]:
    """The released recoveries ``owner`` may collect, newest first."""
    found = engine.search(wf_type=WF_TYPE, state=READY_FOR_OWNER, owner=owner)
    return [WaitingKey(workflow_id=v.id, escrow_id=int(v.context["escrow_id"]),
                       cert_type=str(v.context["escrow"]["cert_type"]),
                       certificate_serial=v.context["escrow"].get("certificate_serial"),
                       released_by=str(v.context["released"]["by"]), collect_by=v.wake_at)
            for v in engine.get_many([s.id for s in found]) if v.context.get("owner") == owner]


def collect_recovered_key(engine: Any, workflow_id: int, *, login: str) -> CollectedKey:
    """The owner (``login``, from their own SSO session) collects a released key, once.

    Anyone else is told "not found", as if there were no such recovery; a
    second collection, an expired or an unreleased one is refused by name.
    Every refusal is audited (``escrow.collect``, outcome ``refused``).
    """
    try:
        view = engine.get(workflow_id)
    except NotFound:
        view = None
    if view is None or view.wf_type != WF_TYPE or view.context.get("owner") != login:
        _refuse(engine, workflow_id, login, "not_owner")
        raise NotFound(f"no recovered key {workflow_id} is waiting for you", code="recovery.not_found")
    _collecting.workflow_id, _collecting.result = workflow_id, None
    try:
        view = engine.execute(workflow_id, "collect", actor=login, role=roles.USER)
        taken: tuple[bytes, str] | None = _collecting.result
    except ActionNotAvailable:  # not released, or collected or expired (perhaps a moment ago)
        raise _not_collectable(engine, engine.get(workflow_id), login) from None
    finally:  # also when the action failed after the activity built it (e.g. the commit)
        _collecting.workflow_id, _collecting.result = None, None
    if view.state != "COLLECTED" or taken is None:
        raise WorkflowError(f"recovery {workflow_id} did not hand out the key (state {view.state})",
                            code="recovery.not_collected")
    return CollectedKey(owner=login, cert_type=str(view.context["escrow"]["cert_type"]),
                        pkcs12=taken[0], password=taken[1])


def _not_collectable(engine: Any, view: Any, login: str) -> RecoveryNotCollectable:
    if view.state == "COLLECTED":
        when = str(view.context.get("collected", {}).get("at", ""))[:19].replace("T", " ")
        reason, text = "collected", (f"you collected this key already ({when} UTC); it is handed out once. "
                                     "If the file or its password is lost, ask a Key Recovery Officer for a "
                                     "new recovery")
    elif view.state == WITHDRAWN:
        reason, text = "withdrawn", ("a Key Recovery Officer withdrew this release; ask them if you still need "
                                     "the key")
    elif view.state == "EXPIRED":
        reason, text = "expired", ("this recovered key was not collected in time; ask a Key Recovery Officer "
                                   "for a new recovery")
    else:
        reason, text = "not_released", (f"this recovery is not released to you yet (state {view.state}); two "
                                        "Key Recovery Officers approve and release it first")
    _refuse(engine, view.id, login, reason)
    return RecoveryNotCollectable(text, code=f"recovery.{reason}")


def _refuse(engine: Any, workflow_id: int, login: str, reason: str) -> None:
    with engine.db.begin() as conn:
        append_audit(conn, actor=login, role=roles.USER, event="escrow.collect", outcome="refused",
                     target=f"workflow:{workflow_id}", details={"reason": reason})
