"""What a domain (certificates, personalization, …) hands the engine.

The engine knows nothing of PKI: a domain brings its own workflow
definitions, the callables they name and the expired rows the worker's
housekeeping may delete.  The caller (``Services``, the CLI, a test)
chooses the domains and passes their folders and registry to the engine;
nothing under ``workflow/`` imports a domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from . import builtins
from .registry import Registry

Purge = Callable[[Connection, Any, datetime], int]
"""``(conn, services, now) -> rows deleted``: one kind of expired data."""


@dataclass(frozen=True)
class WorkflowDomain:
    """One domain's contribution; every part is optional.

    ``definitions`` is a folder of ``*.yaml`` (file name = workflow type);
    ``register`` adds the domain's activities, conditions and validators;
    ``purges`` run in the worker's housekeeping transaction.
    """

    name: str
    definitions: Path | None = None
    register: Callable[[Registry], None] | None = None
    purges: tuple[Purge, ...] = ()


def build_registry(domains: Iterable[WorkflowDomain]) -> Registry:
    """The engine's generic callables plus every domain's; a name used twice is refused.

    Tests and sites add their own on top with ``Registry(parent=…)``.
    """
    registry = Registry()
    registry.include(builtins.callables)
    for domain in domains:
        if domain.register is not None:
            domain.register(registry)
    return registry


def definition_folders(domains: Iterable[WorkflowDomain]) -> list[Path]:
    """The domains' folders in their order: a later one may replace an earlier one's type."""
    return [d.definitions for d in domains if d.definitions is not None]
