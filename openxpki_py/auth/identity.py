"""The SSO identity, as the web server hands it over.

Apache's authentication module (Basic, Kerberos, OpenID Connect …) puts the
login into ``REMOTE_USER`` and may add attributes (name, mail, groups) as
further environment variables.  Request headers are never read here unless
``header_sso`` or ``header_attributes`` is configured, and then only on a
request from a trusted proxy: a client can send any header it likes.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuthError
from .config import GROUPS_ATTRIBUTE, SSOConfig

log = logging.getLogger(__name__)

MAX_LOGIN_LENGTH = 256
MAX_ATTRIBUTE_LENGTH = 1024
# A directory user may be in hundreds of groups.  The groups string is never
# cut short: a cut could turn "pki-ra-readers" into "pki-ra".
MAX_GROUPS_LENGTH = 65536
MAX_GROUP_LENGTH = 256


class NotAuthenticated(AuthError):
    """The web server passed the request on without an authenticated user."""

    code = "auth.not_authenticated"


class InvalidLogin(AuthError):
    """The SSO module set a login this application cannot use safely."""

    code = "auth.invalid_login"


class RealmRefused(AuthError):
    """A Kerberos principal from a realm the configuration does not list."""

    code = "auth.realm_refused"


def map_login(login: str, sso: SSOConfig) -> str:
    """The SSO login as this application knows the person: realm stripped, case as configured.

    Done once, where the login enters the application, so sessions, roles,
    workflows and the audit log never see two spellings of one person.
    """
    if sso.realms:
        name, at, realm = login.rpartition("@")
        if not at:
            raise RealmRefused(f"the SSO login {login[:40]!r} carries no realm; expected one of "
                               + ", ".join(sorted(sso.realms)))
        # Kerberos realms are upper case by convention, but compared as configured: upper.
        if realm.upper() not in sso.realms or not name:
            raise RealmRefused(f"the SSO login {login[:40]!r} is from a realm this site does not accept")
        login = name
    if sso.login_case == "lower":
        login = login.lower()
    return login


@dataclass(frozen=True)
class Identity:
    """An SSO user: the login and the attributes the SSO module set."""

    login: str
    attributes: dict[str, str] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()  # from the ``groups`` attribute, split

    @property
    def display_name(self) -> str:
        return self.attributes.get("display_name") or self.login


def _wsgi_bytes(value: str) -> bytes | None:
    """The server's bytes: PEP 3333 hands them over decoded as latin-1 (None: not WSGI text)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _login_text(value: str) -> str:
    # One decoding rule: the SSO's bytes are UTF-8, or the login is refused.
    # Falling back to latin-1 made the latin-1 bytes of "jürgen" the same
    # person as the UTF-8 "jürgen" — two accounts, one identity.
    raw = _wsgi_bytes(value)
    try:
        if raw is None:
            raise UnicodeError
        return raw.decode("utf-8")
    except UnicodeError:
        raise InvalidLogin("the SSO login is not valid UTF-8 (as the web server passes it on); "
                           "the SSO module must hand over UTF-8 names") from None


def _attribute_text(value: str) -> str:
    # Attributes are only shown: undecodable bytes become U+FFFD, never a second reading.
    raw = _wsgi_bytes(value)
    return raw.decode("utf-8", "replace") if raw is not None else "\ufffd"


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def _header_key(header: str) -> str:
    """Where the server puts a request header in the environ (CGI rule)."""
    return "HTTP_" + header.upper().replace("-", "_")


def _login_from(environ: Mapping[str, Any], sso: SSOConfig, from_trusted_proxy: bool) -> str | None:
    if sso.header_sso is not None:
        if not from_trusted_proxy:
            return None  # anyone can send the header: only the proxy's counts
        key = _header_key(sso.header_sso)
    else:
        key = sso.login_key
    value = environ.get(key)
    if not isinstance(value, str) or not value.strip():
        return None
    # Not stripped: "alice " may be a different account to the SSO (an
    # htpasswd file matches exactly); identity_from_environ refuses it.
    return _login_text(value)


def _raw_attributes(environ: Mapping[str, Any], sso: SSOConfig, from_trusted_proxy: bool) -> dict[str, str]:
    """Logical name → the server's text; the environment wins over a proxy's header."""
    sources = [sso.attributes]
    if from_trusted_proxy:
        sources.append({name: _header_key(header) for name, header in sso.header_attributes.items()})
    found: dict[str, str] = {}
    for source in sources:
        for name, key in source.items():
            value = environ.get(key)
            if name not in found and isinstance(value, str) and value:
                found[name] = _attribute_text(value)
    return found


def _split_groups(text: str, separator: str) -> frozenset[str]:
    if len(text) > MAX_GROUPS_LENGTH:
        # Refusing all is safe; keeping a prefix could grant a role by a cut-off name.
        log.warning("SSO groups ignored: %d characters, more than %d", len(text), MAX_GROUPS_LENGTH)
        return frozenset()
    groups = (group.strip() for group in text.split(separator))
    return frozenset(g for g in groups if g and len(g) <= MAX_GROUP_LENGTH and not _has_control_chars(g))


def identity_from_environ(environ: Mapping[str, Any], sso: SSOConfig, *,
                          from_trusted_proxy: bool = False) -> Identity:
    """The authenticated user of this request, or :class:`NotAuthenticated`.

    ``from_trusted_proxy``: the request's peer is one of ``web.trusted_proxies``,
    so the configured headers count.
    """
    login = _login_from(environ, sso, from_trusted_proxy)
    if login is None:
        raise NotAuthenticated("the web server did not authenticate the user")
    # The login goes into the audit log, the session table and a handler's
    # environment: refuse what could forge a log line or overflow a column.
    if len(login) > MAX_LOGIN_LENGTH or _has_control_chars(login) or login != login.strip():
        raise InvalidLogin(f"the SSO login {login[:40]!r} is too long, has surrounding spaces or contains "
                           "control characters")
    login = map_login(login, sso)
    raw = _raw_attributes(environ, sso, from_trusted_proxy)
    groups = _split_groups(raw.get(GROUPS_ATTRIBUTE, ""), sso.groups_separator)
    attributes: dict[str, str] = {}
    for name, text in raw.items():
        if name == GROUPS_ATTRIBUTE and len(text) > MAX_GROUPS_LENGTH:
            continue  # ignored whole (see _split_groups), for handlers too
        text = text[:MAX_ATTRIBUTE_LENGTH] if name != GROUPS_ATTRIBUTE else text
        # Attributes are only shown and passed on; drop line breaks rather than refuse the user.
        attributes[name] = "".join(" " if _has_control_chars(ch) else ch for ch in text)
    return Identity(login=login, attributes=attributes, groups=groups)
