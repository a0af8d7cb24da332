"""Parsing the auth section, and reading the SSO identity from the environ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpki_py.auth.config import AuthConfig, parse_auth_config
from openxpki_py.auth.identity import InvalidLogin, NotAuthenticated, RealmRefused, identity_from_environ
from openxpki_py.configreader import Reader
from openxpki_py.errors import ConfigError
from openxpki_py.web.config import parse_web_config


def parse(data: Any, base: Path = Path("/etc/openxpki-py")) -> AuthConfig:
    return parse_auth_config(Reader(data, "auth", base))


def test_roles_in_order_with_defaults_and_relative_commands() -> None:
    cfg = parse({"roles": {
        "User": {"command": ["/bin/true"]},
        "RA Operator": {"command": ["../auth/check-ldap-group", "pki-ra"], "timeout": 3, "users": ["bob"]},
    }}, Path("/etc/openxpki-py"))
    assert cfg.sso.login_key == "REMOTE_USER" and cfg.sso.header_sso is None
    assert list(cfg.roles) == ["User", "RA Operator"]
    ra = cfg.roles["RA Operator"]
    assert ra.command == ("/etc/openxpki-py/../auth/check-ldap-group", "pki-ra") and ra.timeout == 3.0
    assert [h.role for h in cfg.roles_for("alice")] == ["User"]
    assert [h.role for h in cfg.roles_for("bob")] == ["User", "RA Operator"]


@pytest.mark.parametrize(("data", "message"), [
    ({"roles": {"User": {"command": ["true"]}}}, "auth.roles.User.command: expected a program given by its path"),
    ({"roles": {"User": {"command": []}}}, "auth.roles.User.command"),
    ({"roles": {"User": {"command": "/bin/true"}}}, "auth.roles.User.command: expected a list of strings"),
    ({"roles": {"User": {"command": ["/bin/true"], "shell": True}}}, "auth.roles.User.shell: unknown key"),
    ({"roles": {"User": {"command": ["/bin/true"], "env": {"OPENXPKI_USER": "x"}}}}, "OPENXPKI_USER"),
    ({"roles": {"User": {"command": ["/bin/true"], "env": {"OPENXPKI_SSO_MAIL": "x"}}}}, "OPENXPKI_USER"),
    ({"roles": {"User": {"command": ["/bin/true"], "timeout": 0}}}, "auth.roles.User.timeout"),
    ({"roles": {"<b>": {"command": ["/bin/true"]}}}, "role names"),
    ({"roles": {"System": {"command": ["/bin/true"]}}}, "auth.roles.System: 'System' is the application's own role"),
    ({"sso": {"login": "HTTP_X_REMOTE_USER"}}, "auth.sso.login: HTTP_X_REMOTE_USER is a client request header"),
    ({"sso": {"attributes": {"mail": "HTTP_MAIL"}}}, "auth.sso.attributes.mail"),
    ({"sso": {"header_sso": "X Remote"}}, "auth.sso.header_sso"),
    ({"sso": {"logn": "REMOTE_USER"}}, "auth.sso.logn: unknown key"),
])
def test_config_errors_name_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse(data)


def test_web_config_defaults_and_errors() -> None:
    web = parse_web_config(Reader({}, "web"))
    assert web.session.cookie_secure and web.session.cookie_name == "openxpki_session"
    assert web.deep_link.workflow == "smartcard_personalization" and web.deep_link.role == "User"
    with pytest.raises(ConfigError, match="web.session.absolute_timeout"):
        parse_web_config(Reader({"session": {"idle_timeout": 3600, "absolute_timeout": 600}}, "web"))
    with pytest.raises(ConfigError, match="web.session.cookie_name"):
        parse_web_config(Reader({"session": {"cookie_name": "a;b"}}, "web"))


SSO = parse({"sso": {"attributes": {"display_name": "SSO_NAME", "mail": "SSO_MAIL"}},
             "roles": {"User": {"command": ["/bin/true"]}}}).sso


def test_identity_from_remote_user_with_attributes() -> None:
    ident = identity_from_environ({"REMOTE_USER": "alice", "SSO_NAME": "Alice A.", "HTTP_SSO_MAIL": "x"}, SSO)
    assert ident.login == "alice" and ident.attributes == {"display_name": "Alice A."}
    # "alice " may be another account to the SSO (htpasswd matches exactly): refused, not trimmed
    with pytest.raises(InvalidLogin, match="surrounding spaces"):
        identity_from_environ({"REMOTE_USER": " alice "}, SSO)
    assert ident.display_name == "Alice A."
    assert identity_from_environ({"REMOTE_USER": "bob"}, SSO).display_name == "bob"


def test_utf8_from_the_server_is_decoded() -> None:
    raw = "Jürgen".encode().decode("latin-1")  # what PEP 3333 hands over
    assert identity_from_environ({"REMOTE_USER": raw, "SSO_NAME": raw}, SSO).attributes["display_name"] == "Jürgen"


@pytest.mark.parametrize("environ", [{}, {"REMOTE_USER": ""}, {"HTTP_REMOTE_USER": "bob"},
                                     {"HTTP_X_REMOTE_USER": "bob"}])
def test_no_login_is_not_authenticated(environ: dict[str, str]) -> None:
    with pytest.raises(NotAuthenticated):
        identity_from_environ(environ, SSO)


@pytest.mark.parametrize("login", ["bob\nINFO forged", "x" * 300, "bob\u202e"])
def test_unusable_logins_are_refused(login: str) -> None:
    with pytest.raises(InvalidLogin):
        identity_from_environ({"REMOTE_USER": login}, SSO)


def test_attribute_line_breaks_are_flattened() -> None:
    ident = identity_from_environ({"REMOTE_USER": "bob", "SSO_NAME": "Bob\r\nEvil"}, SSO)
    assert ident.attributes["display_name"] == "Bob  Evil"


def test_header_sso_reads_only_the_named_header() -> None:
    sso = parse({"sso": {"header_sso": "X-Forwarded-User"}}).sso
    assert identity_from_environ({"HTTP_X_FORWARDED_USER": "carol", "REMOTE_USER": "x"}, sso,
                                 from_trusted_proxy=True).login == "carol"
    with pytest.raises(NotAuthenticated):
        identity_from_environ({"REMOTE_USER": "x", "HTTP_X_REMOTE_USER": "y"}, sso, from_trusted_proxy=True)


def test_shipped_auth_and_web_sections_parse() -> None:
    shipped = Path(__file__).resolve().parents[2] / "contrib" / "config" / "config.yaml"
    data = yaml.safe_load(shipped.read_text())
    auth = parse_auth_config(Reader(data["auth"], "auth", shipped.parent))
    assert list(auth.roles) == ["User", "RA Operator", "CA Operator", "Key Recovery Officer"]
    assert auth.roles["User"].command == ("/bin/true",)
    assert auth.roles["RA Operator"].command[0].endswith("/auth/check-ldap-group")
    web = parse_web_config(Reader(data["web"], "web", shipped.parent))
    assert web.session.cookie_secure and web.deep_link.workflow == "smartcard_personalization"


def test_latin1_bytes_of_a_utf8_name_are_refused_not_reread() -> None:
    # The latin-1 bytes of "jürgen" were taken as the UTF-8 "jürgen": one person from two accounts.
    latin1 = "jürgen".encode("latin-1").decode("latin-1")  # as PEP 3333 hands over b"j\xfcrgen"
    with pytest.raises(InvalidLogin, match="not valid UTF-8"):
        identity_from_environ({"REMOTE_USER": latin1}, SSO)
    utf8 = "jürgen".encode().decode("latin-1")
    assert identity_from_environ({"REMOTE_USER": utf8}, SSO).login == "jürgen"
    # Not WSGI text at all (a character beyond latin-1): refused as well.
    with pytest.raises(InvalidLogin):
        identity_from_environ({"REMOTE_USER": "j\u0100rgen"}, SSO)


def test_realms_are_stripped_and_others_refused() -> None:
    sso = parse({"sso": {"realms": ["EXAMPLE.COM", "corp.example.com"]}}).sso
    assert identity_from_environ({"REMOTE_USER": "alice@EXAMPLE.COM"}, sso).login == "alice"
    assert identity_from_environ({"REMOTE_USER": "bob@CORP.EXAMPLE.COM"}, sso).login == "bob"
    for login in ("alice@EVIL.EXAMPLE", "alice", "@EXAMPLE.COM"):
        with pytest.raises(RealmRefused):
            identity_from_environ({"REMOTE_USER": login}, sso)


def test_login_case_lower_makes_one_spelling() -> None:
    lower = parse({"sso": {"login_case": "lower"}}).sso
    assert {identity_from_environ({"REMOTE_USER": x}, lower).login for x in ("BOB", "Bob", "bob")} == {"bob"}
    # The default keeps the spelling: BOB stays BOB (and the directory then refuses it).
    assert identity_from_environ({"REMOTE_USER": "BOB"}, SSO).login == "BOB"


@pytest.mark.parametrize(("section", "key"), [({"login_case": "upper"}, "auth.sso.login_case"),
                                              ({"realms": ["bad realm"]}, "auth.sso.realms")])
def test_bad_login_mapping_config_names_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse({"sso": section})


# --- ClearTrust style: name, mail and groups from the SSO module ----------------

CLEARTRUST = parse({"sso": {"attributes": {"display_name": "SSO_NAME", "mail": "SSO_MAIL", "groups": "SSO_GROUPS"},
                            "groups_separator": ";",
                            "header_attributes": {"display_name": "X-SSO-Name", "groups": "X-SSO-Groups"}},
                    "roles": {"User": {"command": ["/bin/true"]},
                              "RA Operator": {"groups": ["pki-ra"]},
                              "CA Operator": {"groups": ["pki-ca"], "command": ["/bin/true"],
                                              "users": ["carol"]}}})


def test_groups_are_split_by_the_configured_separator() -> None:
    ident = identity_from_environ({"REMOTE_USER": "bob", "SSO_GROUPS": " pki-ra ; staff;;cn=x,o=y ",
                                   "SSO_MAIL": "bob@example.com"}, CLEARTRUST.sso)
    assert ident.groups == {"pki-ra", "staff", "cn=x,o=y"}
    assert ident.attributes["mail"] == "bob@example.com"
    assert ident.attributes["groups"] == " pki-ra ; staff;;cn=x,o=y "  # handed on to handlers as it came


def test_headers_count_only_from_a_trusted_proxy_and_never_as_the_login() -> None:
    environ = {"REMOTE_USER": "bob", "HTTP_X_SSO_GROUPS": "pki-ra", "HTTP_X_SSO_NAME": "Bob B.",
               "HTTP_X_REMOTE_USER": "carol"}
    spoofed = identity_from_environ(environ, CLEARTRUST.sso)
    assert spoofed.groups == frozenset() and spoofed.attributes == {} and spoofed.login == "bob"
    proxied = identity_from_environ(environ, CLEARTRUST.sso, from_trusted_proxy=True)
    assert proxied.groups == {"pki-ra"} and proxied.display_name == "Bob B." and proxied.login == "bob"
    # What the server itself set wins over the proxy's header.
    both = identity_from_environ({**environ, "SSO_GROUPS": "staff"}, CLEARTRUST.sso, from_trusted_proxy=True)
    assert both.groups == {"staff"}


def test_header_sso_login_needs_a_trusted_proxy() -> None:
    sso = parse({"sso": {"header_sso": "X-Forwarded-User"}}).sso
    with pytest.raises(NotAuthenticated):
        identity_from_environ({"HTTP_X_FORWARDED_USER": "carol", "REMOTE_USER": "x"}, sso)


def test_an_overlong_groups_string_is_ignored_whole_not_cut() -> None:
    # Cut at any length, "…;pki-ra-readers" could end as "…;pki-ra".
    text = "g" * 65530 + ";pki-ra-readers"
    ident = identity_from_environ({"REMOTE_USER": "bob", "SSO_GROUPS": text}, CLEARTRUST.sso)
    assert ident.groups == frozenset() and "groups" not in ident.attributes


def test_roles_with_groups_are_offered_to_members_only() -> None:
    assert [h.role for h in CLEARTRUST.roles_for("bob")] == ["User"]
    assert [h.role for h in CLEARTRUST.roles_for("bob", frozenset({"pki-ra"}))] == ["User", "RA Operator"]
    assert [h.role for h in CLEARTRUST.roles_for("bob", frozenset({"pki-ca"}))] == ["User"]  # users: carol
    assert [h.role for h in CLEARTRUST.roles_for("carol", frozenset({"pki-ca"}))] == ["User", "CA Operator"]
    assert CLEARTRUST.roles["RA Operator"].command is None and CLEARTRUST.reads_headers


@pytest.mark.parametrize(("data", "message"), [
    ({"roles": {"RA": {}}}, "auth.roles.RA.command: expected a command .* or `groups`"),
    ({"roles": {"RA": {"groups": []}}}, "auth.roles.RA.groups"),
    ({"roles": {"RA": {"groups": [" pki-ra"]}}}, "auth.roles.RA.groups"),
    ({"sso": {"groups_separator": ""}}, "auth.sso.groups_separator"),
    ({"sso": {"header_attributes": {"groups": "X SSO"}}}, "auth.sso.header_attributes.groups"),
    ({"sso": {"header_attributes": {"Groups": "X-SSO"}}}, "attribute names are lower_case"),
    ({"sso": {"logout_url": "javascript:alert(1)"}}, "auth.sso.logout_url"),
    ({"sso": {"logout_url": "//evil.example/"}}, "auth.sso.logout_url"),
])
def test_group_config_errors_name_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(data)
