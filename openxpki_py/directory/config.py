"""The ``directory:`` section of the instance config, parsed and checked.

Every key is documented in contrib/config/config.yaml.  Filter templates are
parsed here, so a broken filter fails when the service starts, naming the
key, rather than on the first user's login.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from openxpki_py_token.secret import SecretRef

from ..configreader import Reader
from ..errors import ConfigError
from .dn import is_dn
from .filters import FilterSyntaxError, is_attribute_name, parse_filter, placeholders, render_filter

BACKENDS = ("ldif", "ldap")
MEMBERSHIPS = ("member", "memberOf")

DEFAULT_ATTRIBUTES: Mapping[str, str] = MappingProxyType({
    "cn": "cn",
    "given_name": "givenName",
    "surname": "sn",
    "mail": "mail",
    "upn": "userPrincipalName",
    "employee_number": "employeeNumber",
    "department": "departmentNumber",
    "object_sid": "objectSid",  # Windows strong mapping (KB5014754); absent outside AD is fine
})
# person is a superclass of both inetOrgPerson and Active Directory's user.
DEFAULT_USER_FILTER = "(&(objectClass=person)({login_attribute}={login}))"
DEFAULT_GROUP_FILTER = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
USER_FILTER_PLACEHOLDERS = frozenset({"login", "login_attribute"})


@dataclass(frozen=True)
class LdapConfig:
    """How to reach and bind to the LDAP server(s)."""

    uri: str
    starttls: bool
    ca_file: Path | None
    bind_dn: str | None
    bind_password: SecretRef | None = field(repr=False)
    timeout: float
    page_size: int


@dataclass(frozen=True)
class GroupsConfig:
    """Where groups live and how membership is recorded."""

    base_dn: str
    filter: str
    name_attribute: str
    member_attributes: tuple[str, ...]
    member_of_attribute: str


@dataclass(frozen=True)
class DirectoryConfig:
    backend: str
    base_dn: str
    login_attribute: str
    user_filter: str
    attributes: Mapping[str, str]
    required: tuple[str, ...]
    membership: str
    groups: GroupsConfig
    ldif_file: Path | None = None
    ldap: LdapConfig | None = None


def parse_directory_config(reader: Reader) -> DirectoryConfig:
    """Read the ``directory:`` section (``reader`` is positioned on it)."""
    backend = reader.choice("backend", BACKENDS)
    base_dn = _dn(reader, "base_dn")
    login_attribute = _attribute(reader, "login_attribute", "uid")
    user_filter = _user_filter(reader)
    attributes = reader.str_map("attributes", dict(DEFAULT_ATTRIBUTES))
    for name, attribute in attributes.items():
        if not is_attribute_name(attribute):
            raise ConfigError(f"{reader.key_path('attributes')}.{name}: {attribute!r} is not an attribute name")
    required = tuple(reader.str_list("required", ["cn"]))
    for name in required:
        if name not in attributes:
            raise ConfigError(
                f"{reader.key_path('required')}: {name!r} is not one of the names in "
                f"{reader.key_path('attributes')} ({', '.join(attributes)})"
            )
    membership = reader.choice("membership", MEMBERSHIPS, "member")
    groups = _groups(reader.section("groups"), base_dn)
    ldif_file = reader.filepath("ldif_file") if backend == "ldif" else reader.filepath("ldif_file", None)
    ldap_config = _ldap(reader.section("ldap")) if backend == "ldap" or reader.has("ldap") else None

    if backend == "ldif":
        for key, text in (("user_filter", user_filter), ("groups.filter", groups.filter)):
            sample = render_filter(text, login="x", login_attribute=login_attribute)
            if not parse_filter(sample).local():
                raise ConfigError(
                    f"{reader.key_path(key)}: extensible matches (attr:rule:=value) need an "
                    "LDAP server; the ldif backend cannot evaluate them"
                )
    reader.finish()
    return DirectoryConfig(
        backend=backend,
        base_dn=base_dn,
        login_attribute=login_attribute,
        user_filter=user_filter,
        attributes=MappingProxyType(dict(attributes)),
        required=required,
        membership=membership,
        groups=groups,
        ldif_file=ldif_file,
        ldap=ldap_config,
    )


def _dn(reader: Reader, key: str, default: str | None = None) -> str:
    value: str = reader.str(key) if default is None else reader.str(key, default)
    if not is_dn(value):
        raise reader.error(key, "a distinguished name such as dc=example,dc=com")
    return value


def _attribute(reader: Reader, key: str, default: str) -> str:
    value: str = reader.str(key, default)
    if not is_attribute_name(value):
        raise reader.error(key, "an LDAP attribute name such as uid or sAMAccountName")
    return value


def _check_filter(reader: Reader, key: str, sample: str) -> None:
    try:
        parse_filter(sample)
    except FilterSyntaxError as exc:
        raise ConfigError(f"{reader.key_path(key)}: not a valid LDAP filter: {exc}") from exc


def _user_filter(reader: Reader) -> str:
    template: str = reader.str("user_filter", DEFAULT_USER_FILTER)
    names = placeholders(template)
    unknown = names - USER_FILTER_PLACEHOLDERS
    if unknown:
        raise ConfigError(
            f"{reader.key_path('user_filter')}: unknown placeholder {{{sorted(unknown)[0]}}} "
            "(known: {login}, {login_attribute})"
        )
    if "login" not in names:
        raise ConfigError(f"{reader.key_path('user_filter')}: the template must contain {{login}}")
    _check_filter(reader, "user_filter", render_filter(template, login="x", login_attribute="uid"))
    return template


def _groups(reader: Reader, default_base: str) -> GroupsConfig:
    base_dn = _dn(reader, "base_dn", default_base)
    group_filter: str = reader.str("filter", DEFAULT_GROUP_FILTER)
    if placeholders(group_filter):
        raise ConfigError(f"{reader.key_path('filter')}: takes no placeholders")
    _check_filter(reader, "filter", group_filter)
    name_attribute = _attribute(reader, "name_attribute", "cn")
    member_attributes = tuple(reader.str_list("member_attributes", ["member", "uniqueMember"]))
    for attribute in member_attributes:
        if not is_attribute_name(attribute):
            raise reader.error("member_attributes", "a list of attribute names")
    if not member_attributes:
        raise reader.error("member_attributes", "at least one attribute name")
    member_of_attribute = _attribute(reader, "member_of_attribute", "memberOf")
    reader.finish()
    return GroupsConfig(base_dn, group_filter, name_attribute, member_attributes, member_of_attribute)


def _ldap(reader: Reader) -> LdapConfig:
    uri: str = reader.str("uri")
    uris = uri.split()
    for one in uris:
        if not one.lower().startswith(("ldap://", "ldaps://", "ldapi://")):
            raise reader.error("uri", "ldap://, ldaps:// or ldapi:// URIs (several separated by spaces)")
    plain = any(one.lower().startswith("ldap://") for one in uris)
    starttls: bool = reader.bool("starttls", plain)
    if starttls and not plain:
        raise ConfigError(f"{reader.key_path('starttls')}: StartTLS applies to ldap:// URIs only")
    ca_file = reader.filepath("ca_file", None)
    bind_dn = _dn(reader, "bind_dn") if reader.has("bind_dn") else None
    reader.raw("bind_dn", None)  # mark as read even when absent
    bind_password = reader.secret("bind_password", required=bind_dn is not None)
    if bind_password is not None and bind_dn is None:
        raise ConfigError(f"{reader.key_path('bind_dn')}: a bind password is configured but no bind DN")
    timeout: float = reader.float("timeout", 5.0, minimum=0.1)
    page_size: int = reader.int("page_size", 500, minimum=0, maximum=100000)
    reader.finish()
    return LdapConfig(uri, starttls, ca_file, bind_dn, bind_password, timeout, page_size)
