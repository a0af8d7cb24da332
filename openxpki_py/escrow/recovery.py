"""``key_recovery``: two different Key Recovery Officers approve before an escrowed key is released.

Four eyes compare persons (the canonical login the engine records as the
actor), not button presses: one officer approving twice counts once, and
the key's owner never approves a recovery of their own key.  The release
builds the PKCS#12 in the action's transaction and hands it, with its
one-time password, to the caller in memory (:func:`release_recovered_key`);
neither reaches the database, the workflow context or a log.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from .. import roles
from ..db import certstore
from ..errors import PolicyViolation, WorkflowError
from ..workflow.context import ActivityContext
from ..workflow.registry import Registry
from .personalization import escrow_of
from .service import KeyEscrow

callables = Registry()

WF_TYPE = "key_recovery"
APPROVALS_REQUIRED = 2

# The release hands its PKCS#12 to the caller of release_recovered_key, in
# this process only: keyed by workflow id, taken exactly once.
_handoff: dict[int, tuple[bytes, str]] = {}
_handoff_lock = threading.Lock()


@dataclass(frozen=True)
class ReleasedKey:
    """What the owner receives: the PKCS#12 and the password that opens it (shown once)."""

    owner: str
    pkcs12: bytes
    password: str


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


@callables.activity("release_escrowed_key")
def release_escrowed_key(ctx: ActivityContext) -> None:
    """Only after two approvals (the state says so); the PKCS#12 goes to the hand-off, never the context."""
    if not recovery_approved(ctx):
        raise PolicyViolation("two different Key Recovery Officers must approve first", code="recovery.unapproved")
    escrow = escrow_of(ctx.services)
    row = KeyEscrow.record(ctx.conn, int(ctx["escrow_id"]))
    cert_row = certstore.certificate_for_key(ctx.conn, row["public_key_sha256"])
    cert = x509.load_der_x509_certificate(bytes(cert_row["der"])) if cert_row is not None else None
    data, password = escrow.release_pkcs12(ctx.conn, int(ctx["escrow_id"]), cert, actor=ctx.actor, role=ctx.role,
                                           recovery_workflow=ctx.workflow_id)
    with _handoff_lock:
        _handoff[ctx.workflow_id] = (data, password)
    ctx["released"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "form": "pkcs12"}


# --- the service functions the CLI and the web console call --------------------------


def request_recovery(engine: Any, escrow_id: int, *, reason: str, actor: str) -> Any:
    """Start a recovery as a Key Recovery Officer; returns the workflow view."""
    return engine.start(WF_TYPE, actor=actor, role=roles.KEY_RECOVERY_OFFICER,
                        context={"escrow_id": escrow_id, "reason": reason})


def approve_recovery(engine: Any, workflow_id: int, *, actor: str, comment: str | None = None) -> Any:
    inputs = {"comment": comment} if comment else {}
    return engine.execute(workflow_id, "approve", actor=actor, role=roles.KEY_RECOVERY_OFFICER, inputs=inputs)


def release_recovered_key(engine: Any, workflow_id: int, *, actor: str) -> ReleasedKey:
    """Run ``release`` and take its PKCS#12: the only copy, with the one-time password for the owner."""
    try:
        view = engine.execute(workflow_id, "release", actor=actor, role=roles.KEY_RECOVERY_OFFICER)
    finally:
        with _handoff_lock:
            taken = _handoff.pop(workflow_id, None)
    if view.state != "RELEASED" or taken is None:
        raise WorkflowError(f"recovery {workflow_id} did not release the key (state {view.state})",
                            code="recovery.not_released")
    return ReleasedKey(owner=view.context["owner"], pkcs12=taken[0], password=taken[1])
