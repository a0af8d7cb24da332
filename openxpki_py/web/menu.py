"""What each role finds in the menu.

An entry names a view endpoint; entries whose feature is not available in
this instance (no workflow engine, no such view yet) are left out rather
than shown as dead links.  Later features add their entries here.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

OPERATOR_ROLES = frozenset({"RA Operator", "CA Operator"})


@dataclass(frozen=True)
class MenuEntry:
    label: str
    endpoint: str
    roles: frozenset[str]


MENU: tuple[MenuEntry, ...] = (
    MenuEntry("Personalize SmartCard", "deep_link", frozenset({"User"})),
    MenuEntry("Audit log", "audit_log", OPERATOR_ROLES),
)


def menu_for(role: str | None, available: Container[str]) -> list[MenuEntry]:
    """The entries ``role`` sees, limited to endpoints that work in this instance."""
    if role is None:
        return []
    return [e for e in MENU if role in e.roles and e.endpoint in available]
