"""The ``auth`` section: where the SSO identity comes from, and the roles.

::

    auth:
      sso:
        login: REMOTE_USER            # environ key the SSO module sets
        attributes:                   # extra environ keys, by logical name
          display_name: SSO_NAME
          mail: SSO_MAIL
          groups: SSO_GROUPS          # the user's groups, one string
        groups_separator: ","         # how the groups string is split
        header_attributes:            # the same from request headers: web.trusted_proxies only
          groups: X-SSO-Groups
        # header_sso: X-Remote-User   # ONLY from web.trusted_proxies
        logout_url: /oidc/redirect?logout=https%3A%2F%2Fpki.example.com%2F  # shown after logout
        login_case: preserve          # preserve | lower (see below)
        realms: [EXAMPLE.COM]         # strip these (alice@EXAMPLE.COM → alice), refuse others
      roles:
        User:
          command: [/bin/true]
        RA Operator:
          command: [/usr/share/openxpki-py/auth/check-ldap-group, pki-ra]
          timeout: 10
          users: [bob]                # optional: offer this role to these logins only
        CA Operator:
          groups: [pki-ca]            # granted to members of an SSO group (no command needed)

The SSO login is mapped once, before anything else sees it: ``realms``
(Kerberos principals, ``alice@EXAMPLE.COM``) strips a listed realm and
refuses a principal of any other; without ``realms`` a login is taken as it
is, ``@`` included.  ``login_case: lower`` lower-cases the login, for SSO
modules that accept any spelling (mod_authnz_ldap, Active Directory);
``preserve`` (the default) keeps it.  Either way the result must then equal
the user's directory entry's own login attribute exactly: ``BOB`` is not
``bob`` unless the SSO's spelling is declared irrelevant with ``lower``.

Attributes are only shown and handed to role handlers: the login comes
from ``login`` (or ``header_sso``) alone, and certificate subjects from the
directory alone.  ``header_attributes`` and ``header_sso`` are read only on
requests whose peer is one of ``web.trusted_proxies``; an attribute the
server set in the environment wins over a header of the same name.

Roles are offered in the order written.  A role is granted only by its
handler (OpenXPKI's "External Static"): ``groups`` grants it to a member of
one of the listed SSO groups (the ``groups`` attribute), ``command`` runs a
program whose exit status 0 grants it; with both, both must agree.  A role
with ``groups`` is offered to members only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import roles
from ..configreader import Reader
from ..errors import ConfigError

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ATTR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_REALM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,254}$")
_ROLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9 _.-]{0,63}$")

DEFAULT_HANDLER_TIMEOUT = 10.0
RESERVED_ENV = frozenset({"OPENXPKI_USER", "OPENXPKI_ROLE"})


LoginCase = Literal["preserve", "lower"]
LOGIN_CASES: tuple[LoginCase, ...] = ("preserve", "lower")


GROUPS_ATTRIBUTE = "groups"
DEFAULT_GROUPS_SEPARATOR = ","


@dataclass(frozen=True)
class SSOConfig:
    """Which environ keys carry the user's login and attributes."""

    login_key: str = "REMOTE_USER"
    attributes: dict[str, str] = field(default_factory=dict)  # logical name → environ key
    # logical name → request header; read only from web.trusted_proxies
    header_attributes: dict[str, str] = field(default_factory=dict)
    groups_separator: str = DEFAULT_GROUPS_SEPARATOR
    header_sso: str | None = None  # a request header trusted as the login (proxy setups only)
    # Where the SSO module ends its own session (offered on the logout page); None: nowhere.
    logout_url: str | None = None
    login_case: LoginCase = "preserve"
    # Kerberos realms stripped from principals (upper case); empty: logins taken as they are.
    realms: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RoleHandler:
    """One role and the external command that decides whether a user gets it."""

    role: str
    command: tuple[str, ...] | None  # None: the SSO groups alone decide
    timeout: float = DEFAULT_HANDLER_TIMEOUT
    env: dict[str, str] = field(default_factory=dict)  # extra fixed variables for the command
    users: frozenset[str] | None = None  # None: offered to every SSO user
    groups: frozenset[str] | None = None  # SSO groups that may have this role; None: not checked

    def offered_to(self, login: str, groups: frozenset[str] = frozenset()) -> bool:
        if self.groups is not None and not self.groups & groups:
            return False
        return self.users is None or login in self.users


@dataclass(frozen=True)
class AuthConfig:
    sso: SSOConfig = field(default_factory=SSOConfig)
    roles: dict[str, RoleHandler] = field(default_factory=dict)

    def roles_for(self, login: str, groups: frozenset[str] = frozenset()) -> list[RoleHandler]:
        """The roles this login (member of these SSO groups) may choose from, in configured order."""
        return [h for h in self.roles.values() if h.offered_to(login, groups)]

    @property
    def reads_headers(self) -> bool:
        """Whether any part of the identity may come from a request header (needs trusted proxies)."""
        return self.sso.header_sso is not None or bool(self.sso.header_attributes)


def _env_key(r: Reader, key: str, value: str) -> str:
    if not _ENV_KEY.match(value):
        raise r.error(key, "an environment variable name such as REMOTE_USER")
    # Apache puts every request header into the environ as HTTP_*; naming one
    # here would quietly let clients choose their identity.
    if value.upper().startswith("HTTP_"):
        raise ConfigError(
            f"{r.key_path(key)}: {value} is a client request header, not something the SSO "
            "module set; use auth.sso.header_sso if a trusted proxy really sends the login as a header"
        )
    return value


def _header_name(r: Reader, key: str, value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise r.error(key, "an HTTP header name such as X-Remote-User")
    return value


def _parse_attributes(r: Reader, key: str, check: Callable[[Reader, str, str], str]) -> dict[str, str]:
    attrs_r = r.section(key)
    attributes: dict[str, str] = {}
    for name in list(attrs_r.data):
        if not isinstance(name, str) or not _ATTR_NAME.match(name):
            raise ConfigError(f"{attrs_r.key_path(str(name))}: attribute names are lower_case words")
        attributes[name] = check(attrs_r, name, attrs_r.str(name))
    attrs_r.finish()
    return attributes


def _parse_sso(r: Reader) -> SSOConfig:
    defaults = SSOConfig()
    login_key = _env_key(r, "login", r.str("login", defaults.login_key))
    attributes = _parse_attributes(r, "attributes", _env_key)
    header_attributes = _parse_attributes(r, "header_attributes", _header_name)
    separator = r.str("groups_separator", defaults.groups_separator)
    if not separator or separator != separator.strip():
        raise r.error("groups_separator", "a non-blank string that separates groups, such as ',' or ';'")
    header = r.str("header_sso", None)
    if header is not None:
        _header_name(r, "header_sso", header)
    logout_url = r.str("logout_url", None)
    if logout_url is not None and (not logout_url.startswith(("/", "https://", "http://"))
                                   or logout_url.startswith("//") or any(c.isspace() for c in logout_url)):
        raise r.error("logout_url", "a path on this site or an http(s) URL, e.g. /oidc/redirect?logout=…")
    realms = r.str_list("realms", [])
    for realm in realms:
        if not _REALM.match(realm):
            raise r.error("realms", "Kerberos realm names such as EXAMPLE.COM")
    cfg = SSOConfig(login_key=login_key, attributes=attributes, header_attributes=header_attributes,
                    groups_separator=separator, header_sso=header, logout_url=logout_url,
                    login_case=r.choice("login_case", LOGIN_CASES, defaults.login_case),
                    realms=frozenset(realm.upper() for realm in realms))
    r.finish()
    return cfg


def _parse_command(r: Reader) -> tuple[str, ...] | None:
    argv = r.str_list("command", None)
    if argv is None:
        return None
    if not argv:
        raise r.error("command", "a non-empty list: the program and its arguments")
    program = Path(argv[0])
    if "/" not in argv[0]:
        # No PATH search: the handler decides who gets a role, so the program
        # run must be the one the administrator named, not the first on PATH.
        raise r.error("command", "a program given by its path (e.g. /bin/true) as first element")
    if not program.is_absolute():
        program = r.base_dir / program
    return (str(program), *argv[1:])


def _parse_role(name: str, r: Reader) -> RoleHandler:
    if not _ROLE_NAME.match(name):
        raise ConfigError(f"{r.path}: role names are letters, digits, spaces, '_', '.', '-' (max 64)")
    if name == roles.SYSTEM:  # the application acting on its own (workflow/engine.py): never a person's role
        raise ConfigError(f"{r.path}: '{roles.SYSTEM}' is the application's own role; it cannot be granted")
    users = r.str_list("users", None)
    env = r.str_map("env", {})
    for key in env:
        # The user, role and SSO attributes are set by the application only.
        if not _ENV_KEY.match(key) or key in RESERVED_ENV or key.startswith("OPENXPKI_SSO_"):
            raise ConfigError(f"{r.key_path('env')}.{key}: expected a variable name other than "
                              "OPENXPKI_USER, OPENXPKI_ROLE or OPENXPKI_SSO_*")
    groups = r.str_list("groups", None)
    if groups is not None and (not groups or any(not g.strip() or g != g.strip() for g in groups)):
        raise r.error("groups", "a non-empty list of SSO group names (as auth.sso's groups attribute carries them)")
    command = _parse_command(r)
    if command is None and groups is None:
        raise r.error("command", "a command (External Static handler) or `groups` (SSO groups that grant the role)")
    handler = RoleHandler(
        role=name,
        command=command,
        groups=frozenset(groups) if groups is not None else None,
        timeout=r.float("timeout", DEFAULT_HANDLER_TIMEOUT, minimum=0.1),
        env=env,
        users=frozenset(users) if users is not None else None,
    )
    r.finish()
    return handler


def parse_auth_config(r: Reader) -> AuthConfig:
    """Parse the ``auth`` section (see the module docstring)."""
    sso = _parse_sso(r.section("sso"))
    # No roles is valid for CLI-only instances; the web app refuses to start then.
    roles = {name: _parse_role(name, sub) for name, sub in r.sections("roles").items()}
    r.finish()
    return AuthConfig(sso=sso, roles=roles)
