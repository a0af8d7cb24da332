"""What every directory backend offers, and how it fails.

The personalization workflow asks the directory one question per user: who
is this login, and what goes into the certificate (name, mail, UPN …)?  The
auth layer may also ask whether the user belongs to a group.  Both backends
(LDAP server, LDIF file) answer through :class:`Directory` and fail with the
errors below, so callers never see python-ldap exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import DirectoryError


class DirectoryUserNotFound(DirectoryError):
    """No entry matches the login."""

    code = "directory.user_not_found"


class DirectoryAmbiguous(DirectoryError):
    """The login (or a group name) matches more than one entry."""

    code = "directory.ambiguous"


class DirectoryAttributeMissing(DirectoryError):
    """The user's entry lacks an attribute the configuration requires."""

    code = "directory.attribute_missing"


class DirectoryGroupNotFound(DirectoryError):
    """A group named in the configuration or by a caller does not exist."""

    code = "directory.group_not_found"


class DirectoryUnavailable(DirectoryError):
    """The LDAP server cannot be reached or timed out, or the LDIF file is unreadable."""

    code = "directory.unavailable"


class DirectoryCredentialsError(DirectoryError):
    """The LDAP server refused the configured bind DN and password."""

    code = "directory.credentials"


def describe_login(login: str) -> str:
    """The login as it may appear in a message: quoted, control characters escaped.

    Logins come from outside (SSO, API); a message or log line must not let
    them forge extra lines.
    """
    return repr(login)


@dataclass(frozen=True)
class DirectoryUser:
    """One person as the directory knows them.

    ``attributes`` holds the configured logical names (``cn``, ``mail``,
    ``upn`` …) with the first value of each attribute the entry has;
    :meth:`values` gives every value of a multi-valued one.
    """

    login: str
    dn: str
    attributes: Mapping[str, str]
    # Every value of each logical attribute; ``attributes`` holds the first.
    all_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    # memberOf values (group DNs) when membership is read from the user entry.
    member_of: tuple[str, ...] = field(default=(), repr=False)

    def values(self, name: str) -> tuple[str, ...]:
        """All values of a logical attribute, in directory order (empty if absent)."""
        if name in self.all_values:
            return self.all_values[name]
        # A user built by hand (tests, fakes) may give attributes only.
        return (self.attributes[name],) if name in self.attributes else ()

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attributes.get(name, default)

    def certificate_values(self) -> dict[str, str]:
        """What certificate profiles may name: the attributes, and ``login`` (the person's own spelling)."""
        return {**self.attributes, "login": self.login}


@runtime_checkable
class Directory(Protocol):
    """A user directory.  One instance per process; it may keep a connection."""

    def find_user(self, login: str) -> DirectoryUser:
        """The single entry for ``login``, with every required attribute present.

        Raises :class:`DirectoryUserNotFound`, :class:`DirectoryAmbiguous`,
        :class:`DirectoryAttributeMissing`, :class:`DirectoryUnavailable` or
        :class:`DirectoryCredentialsError`.
        """
        ...

    def find_person(self, login: str) -> DirectoryUser:
        """The single entry for ``login``, whatever attributes it has.

        ``login`` of the result is the entry's own spelling (servers match
        ``uid`` without regard to case).  Raises as :meth:`find_user`, except
        for missing attributes.
        """
        ...

    def find_people(self, text: str, *, limit: int = 25) -> list[DirectoryUser]:
        """People whose login, name or mail contains ``text`` (the operators' search)."""
        ...

    def is_member(self, user: DirectoryUser | str, group: str) -> bool:
        """Whether the user (object or login) is a direct member of ``group``.

        ``group`` is a group name (value of ``groups.name_attribute``) or a DN.
        An unknown group raises :class:`DirectoryGroupNotFound`: a role bound
        to a group that does not exist is a configuration fault, not a "no".
        """
        ...

    def groups(self, user: DirectoryUser | str) -> list[str]:
        """Names of the groups the user is a direct member of, sorted."""
        ...

    def close(self) -> None:
        """Release connections; the object may be used again afterwards."""
        ...
