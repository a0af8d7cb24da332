"""The audit trail: an append-only, hash-chained table anchored by signed checkpoints.

``chain`` appends rows (every security-relevant event), ``checkpoint`` signs
the chain's head with the audit key, ``external`` keeps a copy of each
checkpoint outside the database, ``verify`` checks all of it, ``service``
ties them to a running instance, ``cli`` is ``openxpki-py audit …``.
See docs/audit.md for what this proves and what it cannot.
"""

from __future__ import annotations

from .chain import GENESIS, append_audit, recent_audit
from .verify import AuditProblem, ChainReport, verify_chain

__all__ = ["GENESIS", "AuditProblem", "ChainReport", "append_audit", "recent_audit", "verify_chain"]
