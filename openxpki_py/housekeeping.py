"""Deleting what has expired: whatever the domains say may go.

Each domain brings its purges (auth: web sessions; personalization:
enrollment codes and agent credentials); they run in one transaction.
Run by ``openxpki-py worker`` every few minutes; any number of workers may
run it at once (plain conditional deletes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from .workflow.domain import WorkflowDomain

log = logging.getLogger(__name__)


def purge_expired(services: Any, domains: Iterable[WorkflowDomain] | None = None) -> int:
    """Run every purge of ``domains`` (default: the instance's); the number of rows deleted."""
    now = datetime.now(timezone.utc)
    removed: dict[str, int] = {}
    with services.db.begin() as conn:
        for domain in services.domains if domains is None else domains:
            for purge in domain.purges:
                removed[domain.name] = removed.get(domain.name, 0) + purge(conn, services, now)
    total = sum(removed.values())
    if total:
        log.info("housekeeping: %d expired row(s) removed (%s)", total,
                 ", ".join(f"{name}: {n}" for name, n in removed.items() if n))
    return total
