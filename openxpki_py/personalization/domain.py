"""The personalization domain as the engine sees it: folder, callables, purge."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from ..workflow.domain import WorkflowDomain
from ..workflow.registry import Registry
from . import activities, enrollment


def register(registry: Registry) -> None:
    registry.include(activities.callables)


def purge_enrollment(conn: Connection, services: Any, now: datetime) -> int:
    """Codes, agent credentials and failure records past their use."""
    return enrollment.purge_expired(conn, now=now)


DOMAIN = WorkflowDomain(
    name="personalization",
    definitions=Path(__file__).with_name("workflows"),
    register=register,
    purges=(purge_enrollment,),
)
