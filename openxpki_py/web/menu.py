"""What each role finds in the menu.

An entry names a view endpoint; entries whose feature is not available in
this instance (no workflow engine, no such view yet) are left out rather
than shown as dead links.  Later features add their entries here.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from .. import roles

OPERATOR_ROLES = roles.OPERATORS


@dataclass(frozen=True)
class MenuEntry:
    label: str
    endpoint: str
    roles: frozenset[str]


@dataclass(frozen=True)
class MenuItem:
    """An entry as a role sees it: ``endpoints`` in order of preference."""

    label: str
    endpoints: tuple[str, ...]
    roles: frozenset[str]


MENU: tuple[MenuItem, ...] = (
    # The personalization page with the menu; where an instance has only the
    # deep link's workflow (no personalization pages), the deep link.
    MenuItem("Personalize SmartCard", ("personalize", "deep_link"), frozenset({roles.USER})),
    MenuItem("My certificates", ("my_certificates",), frozenset({roles.USER})),
    MenuItem("Approvals", ("approvals",), frozenset({roles.RA_OPERATOR})),
    MenuItem("Search", ("console_search",), OPERATOR_ROLES),
    MenuItem("Revocation and CRL", ("console_crl",), OPERATOR_ROLES),
    MenuItem("Stuck work", ("console_stuck",), OPERATOR_ROLES),
    MenuItem("Audit log", ("console_audit", "audit_log"), OPERATOR_ROLES),
    MenuItem("Escrowed keys", ("console_escrow",), OPERATOR_ROLES | {roles.KEY_RECOVERY_OFFICER}),
)


def menu_for(role: str | None, available: Container[str]) -> list[MenuEntry]:
    """The entries ``role`` sees, limited to endpoints that work in this instance."""
    if role is None:
        return []
    entries = []
    for item in MENU:
        endpoint = next((e for e in item.endpoints if e in available), None)
        if role in item.roles and endpoint is not None:
            entries.append(MenuEntry(item.label, endpoint, item.roles))
    return entries
