"""The PIN unblock domain as the engine sees it: the pin_unblock workflow and its callables."""

from __future__ import annotations

from pathlib import Path

from ..workflow.domain import WorkflowDomain
from ..workflow.registry import Registry
from . import activities


def register(registry: Registry) -> None:
    registry.include(activities.callables)


DOMAIN = WorkflowDomain(
    name="unblock",
    definitions=Path(__file__).with_name("workflows"),
    register=register,
)
