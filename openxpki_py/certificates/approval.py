"""Approvals by RA Operators: four eyes, optionally six.

The requester never approves their own request, and one person counts
once however often they press the button: ``approvals_required: 2`` in a
profile means two different RA Operators.
"""

from __future__ import annotations

from ..errors import PolicyViolation
from ..workflow.context import ActivityContext
from ..workflow.registry import Registry

callables = Registry()


@callables.activity("record_approval")
def record_approval(ctx: ActivityContext) -> None:
    approvals = list(ctx.get("approvals", []))
    if ctx.actor == ctx.creator:
        raise PolicyViolation("you requested this yourself; another RA Operator must approve it",
                              code="approval.own_request")
    if any(a.get("by") == ctx.actor for a in approvals):
        raise PolicyViolation(f"{ctx.actor} has approved already; a different RA Operator must give the next "
                              "approval", code="approval.same_person")
    comment = ctx.inputs.get("comment")
    approvals.append({"by": ctx.actor, "at": ctx.now.isoformat(), "comment": comment})
    ctx["approvals"] = approvals
    ctx.note = comment


@callables.activity("record_rejection")
def record_rejection(ctx: ActivityContext) -> None:
    reason = str(ctx.inputs["rejection"])
    ctx["rejection"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "reason": reason}
    ctx.note = reason


@callables.activity("record_approval_expiry")
def record_approval_expiry(ctx: ActivityContext) -> None:
    """No RA Operator decided in time: the request is rejected with that reason."""
    reason = "no RA Operator decided before the deadline; ask for the certificate again"
    ctx["rejection"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "reason": reason, "expired": True}
    ctx.note = reason


@callables.activity("record_withdrawal")
def record_withdrawal(ctx: ActivityContext) -> None:
    """Only the requester takes a request back (the role alone would let any user do it)."""
    if ctx.actor != ctx.creator:
        raise PolicyViolation("only the requester may withdraw this request", code="approval.not_requester")
    ctx["rejection"] = {"by": ctx.actor, "at": ctx.now.isoformat(), "reason": "withdrawn by the requester"}
    ctx.note = "withdrawn by the requester"


@callables.condition("approval_required")
def approval_required(ctx: ActivityContext) -> bool:
    return int(ctx.get("approvals_required", 0)) > 0


@callables.condition("approvals_complete")
def approvals_complete(ctx: ActivityContext) -> bool:
    return len(ctx.get("approvals", [])) >= int(ctx.get("approvals_required", 0))
