"""From an SSO login to the one person the directory knows.

Every login that reaches the application is resolved once, when its session
starts: it must name exactly one directory entry, and be that entry's own
login attribute value exactly.  LDAP servers match ``uid`` without regard to
case, so without the second rule ``BOB`` and ``Bob`` were two people who
could approve one request twice, and an SSO account ``ALICE`` was alice.
The resolved spelling is the person's identity everywhere after: sessions,
workflow ownership, approvals, tokens and the audit log.
"""

from __future__ import annotations

from ..directory.base import (
    Directory,
    DirectoryAmbiguous,
    DirectoryUser,
    DirectoryUserNotFound,
    describe_login,
)
from ..errors import AuthError


class UnknownPerson(AuthError):
    """The SSO login names no directory entry, several, or one spelled otherwise."""

    code = "auth.unknown_person"


def resolve_person(directory: Directory, login: str) -> DirectoryUser:
    """The directory entry of ``login``; :class:`UnknownPerson` unless exactly one, spelled exactly so.

    Directory outages propagate (:class:`~openxpki_py.directory.base.DirectoryUnavailable`):
    a person who cannot be checked now is not refused for good.
    """
    try:
        person = directory.find_person(login)
    except (DirectoryUserNotFound, DirectoryAmbiguous) as exc:
        raise UnknownPerson(f"the SSO login {describe_login(login)} does not name one person in the "
                            f"directory: {exc.message}") from exc
    if person.login != login:
        raise UnknownPerson(f"the SSO login {describe_login(login)} is spelled {describe_login(person.login)} "
                            "in the directory; set auth.sso.login_case: lower if the SSO accepts any spelling")
    return person
