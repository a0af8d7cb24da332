"""Distinguished names: parse, compare, and test containment.

Two spellings of one DN (``CN=RA Operators, ou=Groups`` and
``cn=ra operators,ou=groups``) must compare equal when the LDIF backend
matches ``member`` values or when ``memberOf`` values are checked against a
configured group.  The normal form approximates the server's matching rules
for the usual naming attributes (cn, uid, ou, dc: case-insensitive, spaces
insignificant).
"""

from __future__ import annotations

import ldap.dn

NormalDN = tuple[tuple[tuple[str, str], ...], ...]


def is_dn(text: str) -> bool:
    """Whether ``text`` parses as a non-empty DN (``cn=x,…``), not a bare name."""
    return bool(text) and "=" in text and ldap.dn.is_dn(text)


def fold(value: str) -> str:
    """caseIgnoreMatch, roughly: case-folded, runs of spaces collapsed, trimmed."""
    return " ".join(value.casefold().split())


def normalize_dn(dn: str) -> NormalDN:
    """A comparable form of ``dn``; raises ValueError if it is not a DN."""
    try:
        rdns = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR as exc:
        raise ValueError(f"not a distinguished name: {dn!r}") from exc
    # Multi-valued RDNs (cn=a+uid=b) are sets: order must not matter.
    return tuple(
        tuple(sorted((attr.lower(), fold(value)) for attr, value, _flags in rdn))
        for rdn in rdns
    )


def same_dn(left: str, right: str) -> bool:
    try:
        return normalize_dn(left) == normalize_dn(right)
    except ValueError:
        return False


def is_within(dn: NormalDN, base: NormalDN) -> bool:
    """Whether ``dn`` is ``base`` itself or below it (subtree scope)."""
    return len(dn) >= len(base) and dn[len(dn) - len(base):] == base


def first_rdn_value(dn: str, attribute: str) -> str | None:
    """The value of ``attribute`` in the DN's first RDN (``cn`` of ``cn=x,ou=y``), if there."""
    try:
        rdns = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return None
    if not rdns:
        return None
    for attr, value, _flags in rdns[0]:
        if attr.lower() == attribute.lower():
            return str(value)
    return None
