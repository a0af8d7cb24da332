"""Certificate revocation: who may revoke what, then mark it revoked."""

from __future__ import annotations

from .. import roles
from ..db import certstore
from ..errors import PolicyViolation
from ..services import pki
from ..workflow.context import ActivityContext
from ..workflow.registry import Registry

callables = Registry()

SELF_SERVICE_ROLE = roles.USER


@callables.activity("check_revocation_request")
def check_revocation_request(ctx: ActivityContext) -> None:
    """The certificate exists and is valid; a User may ask only for their own, with approval."""
    row = certstore.find_certificate(ctx.conn, certstore.parse_serial(ctx["serial"]))
    if row["status"] == "revoked":
        raise PolicyViolation(f"certificate {row['serial']} is already revoked", code="revoke.already")
    self_service = ctx.creator_role == SELF_SERVICE_ROLE
    if self_service and row["owner"] != ctx.creator:
        raise PolicyViolation("you may ask to revoke only your own certificates", code="revoke.not_owner")
    ctx["serial"] = row["serial"]  # normalised: lowercase hex
    ctx["certificate_subject"] = row["subject"]
    ctx["certificate_owner"] = row["owner"]
    ctx["approvals_required"] = 1 if self_service else 0
    ctx.set_attribute("certificate_serial", row["serial"])
    if row["owner"]:
        ctx.set_attribute("owner", row["owner"])


@callables.activity("revoke_certificate")
def revoke_certificate(ctx: ActivityContext) -> None:
    pki(ctx).ca.revoke_certificate(ctx.conn, certstore.parse_serial(ctx["serial"]), ctx["reason"],
                                       actor=ctx.creator, role=ctx.creator_role)
    ctx["revoked_at"] = ctx.now.isoformat()


@callables.condition("crl_requested")
def crl_requested(ctx: ActivityContext) -> bool:
    return bool(ctx.get("publish_crl"))
