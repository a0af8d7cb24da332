"""Sign a CRL and publish it where Apache serves the profiles' CDP URL."""

from __future__ import annotations

from ..services import pki
from ..workflow.context import ActivityContext
from ..workflow.registry import Registry

callables = Registry()


@callables.activity("issue_and_publish_crl")
def issue_and_publish_crl(ctx: ActivityContext) -> None:
    # The file is written before the transaction commits; should the commit
    # fail, the next CRL (higher number) replaces it — clients only ever see
    # a complete, validly signed CRL (atomic rename in publish_crl).
    ca = pki(ctx).ca
    issued = ca.issue_crl(ctx.conn, actor=ctx.creator, role=ctx.creator_role)
    paths = ca.publish_crl(ctx.conn, issued)
    ctx["crl_number"] = issued.number
    ctx["crl_revoked"] = issued.revoked
    ctx["crl_published"] = [str(p) for p in paths]
    ctx.add_attribute("crl_number", str(issued.number))
