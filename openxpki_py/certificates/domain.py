"""The certificates domain as the engine sees it: folder and callables."""

from __future__ import annotations

from pathlib import Path

from ..workflow.domain import WorkflowDomain
from ..workflow.registry import Registry
from . import approval, crl, issuance, revocation


def register(registry: Registry) -> None:
    for module in (approval, issuance, revocation, crl):
        registry.include(module.callables)


DOMAIN = WorkflowDomain(
    name="certificates",
    definitions=Path(__file__).with_name("workflows"),
    register=register,
)
