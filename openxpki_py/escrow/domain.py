"""The escrow domain as the engine sees it: the key_recovery workflow and the escrow callables."""

from __future__ import annotations

from pathlib import Path

from ..workflow.domain import WorkflowDomain
from ..workflow.registry import Registry
from . import personalization, recovery


def register(registry: Registry) -> None:
    for module in (personalization, recovery):
        registry.include(module.callables)


DOMAIN = WorkflowDomain(
    name="escrow",
    definitions=Path(__file__).with_name("workflows"),
    register=register,
)
