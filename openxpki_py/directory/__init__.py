"""User data from the directory: an LDAP server, or an LDIF file for small sites.

Callers hold one :class:`Directory` per process (from :func:`open_directory`)
and ask it ``find_user(login)``; every failure is a
:class:`~openxpki_py.errors.DirectoryError` subclass with a stable code.
"""

from __future__ import annotations

from .base import (
    Directory,
    DirectoryAmbiguous,
    DirectoryAttributeMissing,
    DirectoryCredentialsError,
    DirectoryGroupNotFound,
    DirectoryUnavailable,
    DirectoryUser,
    DirectoryUserNotFound,
)
from .config import DirectoryConfig, GroupsConfig, LdapConfig, parse_directory_config


def open_directory(config: DirectoryConfig) -> Directory:
    """The backend the config names.  Nothing is contacted or read until first use."""
    if config.backend == "ldap":
        from .ldap import LdapDirectory

        return LdapDirectory(config)
    from .ldif import LdifDirectory

    return LdifDirectory(config)


__all__ = [
    "Directory",
    "DirectoryAmbiguous",
    "DirectoryAttributeMissing",
    "DirectoryConfig",
    "DirectoryCredentialsError",
    "DirectoryGroupNotFound",
    "DirectoryUnavailable",
    "DirectoryUser",
    "DirectoryUserNotFound",
    "GroupsConfig",
    "LdapConfig",
    "open_directory",
    "parse_directory_config",
]
