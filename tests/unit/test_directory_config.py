"""The directory: section — defaults, checks, and the shipped example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpki_py.configreader import Reader
from openxpki_py.directory import DirectoryConfig, open_directory, parse_directory_config
from openxpki_py.directory.config import DEFAULT_ATTRIBUTES
from openxpki_py.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def parse(data: dict[str, Any]) -> DirectoryConfig:
    return parse_directory_config(Reader(data, "directory", Path("/etc/openxpki-py")))


LDIF = {"backend": "ldif", "ldif_file": "directory.ldif", "base_dn": "dc=example,dc=com"}
LDAP = {
    "backend": "ldap",
    "base_dn": "dc=example,dc=com",
    "ldap": {"uri": "ldap://ldap.example.com", "bind_dn": "cn=reader,dc=example,dc=com",
             "bind_password_file": "ldap.password"},
}


def test_ldif_defaults() -> None:
    cfg = parse(dict(LDIF))
    assert cfg.backend == "ldif"
    assert cfg.ldif_file == Path("/etc/openxpki-py/directory.ldif")  # relative to the config file
    assert cfg.login_attribute == "uid"
    assert dict(cfg.attributes) == dict(DEFAULT_ATTRIBUTES)
    assert cfg.required == ("cn",)
    assert cfg.membership == "member"
    assert cfg.groups.base_dn == "dc=example,dc=com"
    assert cfg.groups.member_attributes == ("member", "uniqueMember")
    assert cfg.ldap is None


def test_ldap_defaults_and_secret() -> None:
    cfg = parse(dict(LDAP))
    assert cfg.ldap is not None
    assert cfg.ldap.starttls is True  # ldap:// defaults to StartTLS
    assert cfg.ldap.timeout == 5.0 and cfg.ldap.page_size == 500
    assert cfg.ldap.bind_password is not None
    assert cfg.ldap.bind_password.file == Path("/etc/openxpki-py/ldap.password")
    assert "password" not in repr(cfg.ldap).replace("bind_password_file", "")


def test_ldaps_defaults_to_no_starttls() -> None:
    cfg = parse({**LDAP, "ldap": {"uri": "ldaps://ldap.example.com"}})
    assert cfg.ldap is not None and cfg.ldap.starttls is False and cfg.ldap.bind_dn is None


@pytest.mark.parametrize(("change", "message"), [
    ({"backend": "x500"}, "directory.backend: expected one of ldif, ldap"),
    ({"base_dn": "example.com"}, "directory.base_dn: expected a distinguished name"),
    ({"login_attribute": "u id"}, "directory.login_attribute: expected an LDAP attribute name"),
    ({"user_filter": "(uid={login}"}, "directory.user_filter: not a valid LDAP filter"),
    ({"user_filter": "(uid=alice)"}, "directory.user_filter: the template must contain {login}"),
    ({"user_filter": "(&({login_attribute}={login})(o={org}))"}, "unknown placeholder {org}"),
    ({"user_filter": "(&(x:1.2.3:=1)(uid={login}))"}, "directory.user_filter: extensible matches"),
    ({"required": ["cn", "phone"]}, "directory.required: 'phone' is not one of the names"),
    ({"attributes": {"cn": "c n"}}, "directory.attributes.cn: 'c n' is not an attribute name"),
    ({"membership": "memberof"}, "directory.membership: expected one of member, memberOf"),
    ({"groups": {"filter": "objectClass=group"}}, "directory.groups.filter: not a valid LDAP filter"),
    ({"groups": {"member_attributes": []}}, "directory.groups.member_attributes"),
    ({"groups": {"name": "cn"}}, "directory.groups.name: unknown key"),
    ({"ldif_file": None}, "directory.ldif_file: required key is missing"),
    ({"lidf_file": "x"}, "directory.lidf_file: unknown key"),
])
def test_ldif_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", "\\{").replace("(", "\\(")):
        parse({**LDIF, **change})


@pytest.mark.parametrize(("ldap", "message"), [
    ({}, "directory.ldap.uri: required key is missing"),
    ({"uri": "http://ldap.example.com"}, "directory.ldap.uri: expected ldap://"),
    ({"uri": "ldaps://a", "starttls": True}, "directory.ldap.starttls: StartTLS applies to ldap:// URIs only"),
    ({"uri": "ldap://a", "bind_dn": "cn=r,dc=x"}, "directory.ldap.bind_password_file: required key is missing"),
    ({"uri": "ldap://a", "bind_dn": "cn=r,dc=x", "bind_password": "secret"}, "secrets are never written"),
    ({"uri": "ldap://a", "bind_password_file": "pw"}, "a bind password is configured but no bind DN"),
    ({"uri": "ldap://a", "bind_dn": "reader"}, "directory.ldap.bind_dn: expected a distinguished name"),
    ({"uri": "ldap://a", "timeout": 0}, "directory.ldap.timeout: expected a number >= 0.1"),
    ({"uri": "ldap://a", "page_size": -1}, "directory.ldap.page_size"),
    ({"uri": "ldap://a", "port": 389}, "directory.ldap.port: unknown key"),
])
def test_ldap_config_errors(ldap: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({**LDAP, "ldap": ldap})


def test_ldap_backend_accepts_extensible_filter() -> None:
    cfg = parse({**LDAP, "user_filter": "(&(objectClass=user)(sAMAccountName={login})"
                                        "(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"})
    assert "803" in cfg.user_filter


def test_shipped_config_section() -> None:
    data = yaml.safe_load((REPO / "contrib" / "config" / "config.yaml").read_text())
    cfg = parse_directory_config(Reader(data["directory"], "directory", REPO / "contrib" / "config"))
    assert cfg.backend == "ldif"
    assert cfg.required == ("cn", "mail", "upn")
    assert cfg.groups.base_dn == "ou=groups,dc=example,dc=com"
    # The commented ldap: block, uncommented, parses too.
    text = (REPO / "contrib" / "config" / "config.yaml").read_text()
    start, end = text.index("# ---- directory ----"), text.index("# ---- /directory ----")
    head, tail = text[start:end].split("  # ldap:\n")
    tail = "  ldap:\n" + tail.replace("  #   ", "    ")
    data = yaml.safe_load(head + tail)
    data["directory"]["backend"] = "ldap"
    cfg = parse_directory_config(Reader(data["directory"], "directory", REPO / "contrib" / "config"))
    assert cfg.ldap is not None and cfg.ldap.bind_dn == "cn=pki-reader,dc=example,dc=com"


def test_open_directory_touches_nothing(tmp_path: Path) -> None:
    cfg = parse({**LDIF, "ldif_file": str(tmp_path / "absent.ldif")})
    directory = open_directory(cfg)  # no error yet: the file is read on first use
    directory.close()
    cfg = parse(dict(LDAP))
    open_directory(cfg).close()
