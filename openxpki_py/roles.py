"""The roles, named once.

A role is granted only by an auth handler (``auth.roles`` in the config,
OpenXPKI's "External Static"); workflow definitions name these roles in
their ACLs and the loader refuses any other.  ``System`` is the worker and
the engine acting on their own, never granted to a person.
"""

from __future__ import annotations

USER = "User"
RA_OPERATOR = "RA Operator"
CA_OPERATOR = "CA Operator"
SYSTEM = "System"
# Approves the release of an escrowed private key (two different persons each time; openxpki_py.escrow).
KEY_RECOVERY_OFFICER = "Key Recovery Officer"

OPERATORS: frozenset[str] = frozenset({RA_OPERATOR, CA_OPERATOR})
KNOWN: frozenset[str] = frozenset({USER, RA_OPERATOR, CA_OPERATOR, KEY_RECOVERY_OFFICER, SYSTEM})
