"""Who may do what in the console (RFC 3647 "who may request revocation", per role).

Checked by the services themselves, so the pages, the JSON API and the
command line refuse alike; a refusal is audited with the role that tried.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.engine import Engine

from .. import roles
from ..audit import append_audit
from ..errors import NotPermitted

RA_AND_CA = frozenset({roles.RA_OPERATOR, roles.CA_OPERATOR})
CA_ONLY = frozenset({roles.CA_OPERATOR})

# The help desk (RA Operator) revokes and holds end-entity certificates; a
# CRL is signed by the CA's key, so issuing one out of schedule is the CA
# Operator's call.  The command line acts as CA Operator (it runs on the server).
ALLOWED: Mapping[str, frozenset[str]] = {
    "cert.revoke": RA_AND_CA,
    "cert.hold": RA_AND_CA,
    "cert.hold.release": RA_AND_CA,
    "crl.issue": CA_ONLY,
    "console.search": RA_AND_CA,
    "workflow.retry": RA_AND_CA,
    "workflow.fail": RA_AND_CA,
    "audit.export": RA_AND_CA,
    "token.status": RA_AND_CA,
}


def may(role: str | None, action: str) -> bool:
    return role is not None and role in ALLOWED.get(action, frozenset())


def require(db: Engine, action: str, *, actor: str, role: str, target: str | None = None) -> None:
    """Raise :class:`NotPermitted` (audited) unless ``role`` may do ``action``."""
    if may(role, action):
        return
    with db.begin() as conn:
        append_audit(conn, actor=actor, role=role, event=action, outcome="refused", target=target,
                     details={"reason": "role not allowed"})
    raise NotPermitted(f"the role {role} may not do {action}", code="console.role")
