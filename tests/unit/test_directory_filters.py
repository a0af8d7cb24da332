"""RFC 4515 filters: escaping, templates, parsing and local matching."""

from __future__ import annotations

import pytest

from openxpki_py.directory.dn import first_rdn_value, is_dn, is_within, normalize_dn, same_dn
from openxpki_py.directory.filters import (
    And,
    Compare,
    Extensible,
    FilterSyntaxError,
    Not,
    Or,
    Present,
    Substring,
    UnsupportedFilter,
    escape_value,
    escape_value_plain,
    parse_filter,
    placeholders,
    render_filter,
)

ALICE = {
    "objectclass": ("top", "person", "inetOrgPerson"),
    "uid": ("alice",),
    "cn": ("Alice  Example",),
    "mail": ("alice@example.com", "a.example@example.com"),
    "employeenumber": ("1001",),
    "memberof": ("cn=RA Operators,ou=Groups,dc=example,dc=com",),
}


@pytest.mark.parametrize(("raw", "escaped"), [
    ("alice", "alice"),
    ("*", "\\2a"),
    ("*)(uid=*", "\\2a\\29\\28uid=\\2a"),
    ("a\\b", "a\\5cb"),
    ("nul\x00", "nul\\00"),
    ("Jürgen", "Jürgen"),
])
def test_escape_value(raw: str, escaped: str) -> None:
    assert escape_value(raw) == escaped
    # Escaped, the value parses back to itself: it cannot change the filter's shape.
    parsed = parse_filter(f"(uid={escaped})")
    assert parsed == Compare("uid", "=", raw)


TRICKY = ["*", "(", ")", "\\", "\x00", "Jürgen Ωmega ☃", "*)(|(uid=*))\\00\x00(", "a\\2ab", "\\\\*", ""]


@pytest.mark.parametrize("raw", TRICKY)
def test_fallback_escapes_like_python_ldap(raw: str) -> None:
    """The LDIF backend's fallback and python-ldap agree, so both backends see one filter."""
    ldap_filter = pytest.importorskip("ldap.filter")
    assert escape_value_plain(raw) == ldap_filter.escape_filter_chars(raw) == escape_value(raw)
    assert parse_filter(f"(uid={escape_value_plain(raw)})") == Compare("uid", "=", raw)


def test_render_filter_escapes_every_value() -> None:
    template = "(&(objectClass=person)({login_attribute}={login}))"
    assert placeholders(template) == {"login", "login_attribute"}
    assert render_filter(template, login="*)(uid=*", login_attribute="uid") == \
        "(&(objectClass=person)(uid=\\2a\\29\\28uid=\\2a))"
    with pytest.raises(KeyError):
        render_filter(template, login="x")


def test_parse_shapes() -> None:
    assert parse_filter("(&(objectClass=person)(!(uid=bob))(|(cn=a*)(mail=*)))") == And((
        Compare("objectClass", "=", "person"),
        Not(Compare("uid", "=", "bob")),
        Or((Substring("cn", "a", (), ""), Present("mail"))),
    ))
    assert parse_filter("(cn=*a*b*c)") == Substring("cn", "", ("a", "b"), "c")
    assert parse_filter("(employeeNumber>=1000)") == Compare("employeeNumber", ">=", "1000")
    assert parse_filter("(&)") == And(())
    assert parse_filter("(cn;lang-de=x)") == Compare("cn;lang-de", "=", "x")
    assert parse_filter("(2.5.4.3=x)") == Compare("2.5.4.3", "=", "x")


def test_extensible_match_parses_but_needs_a_server() -> None:
    node = parse_filter("(&(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))")
    assert not node.local()
    assert isinstance(node, And) and isinstance(node.parts[1], Not)
    assert isinstance(node.parts[1].part, Extensible)
    with pytest.raises(UnsupportedFilter):
        node.parts[1].matches(ALICE)


@pytest.mark.parametrize("text", [
    "uid=alice", "(uid=alice", "(uid=alice))", "(uid=al(ice)", "(uid)", "(=x)", "(u id=x)",
    "(uid=\\zz)", "(uid=\\2)", "(uid>=a*)", "(cn=a**b)", "(uid=\\ff)", "(&(uid=a)", "",
])
def test_parse_errors(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_filter(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("(uid=alice)", True),
    ("(UID=ALICE)", True),
    ("(uid=bob)", False),
    ("(cn=alice example)", True),  # case and inner spaces are insignificant
    ("(objectClass=person)", True),
    ("(objectClass=organizationalPerson)", False),  # no schema: listed classes only
    ("(mail=a.example@example.com)", True),
    ("(mail=*)", True),
    ("(title=*)", False),
    ("(cn=Ali*)", True),
    ("(cn=*Exam*)", True),
    ("(cn=*ple)", True),
    ("(cn=A*e*e)", True),
    ("(cn=Alice*Alice)", False),
    ("(employeeNumber>=1000)", True),
    ("(employeeNumber<=1000)", False),
    ("(memberOf=cn=ra operators,ou=groups,dc=example,dc=com)", True),
    ("(memberOf=CN=RA Operators, OU=Groups, DC=Example, DC=com)", True),
    ("(memberOf=cn=ca operators,ou=groups,dc=example,dc=com)", False),
    ("(&(uid=alice)(!(mail=bob@example.com)))", True),
    ("(|(uid=bob)(uid=carol))", False),
    ("(&)", True),
    ("(|)", False),
    ("(uid=\\2a)", False),
])
def test_local_matching(text: str, expected: bool) -> None:
    assert parse_filter(text).matches(ALICE) is expected


def test_dn_helpers() -> None:
    assert is_dn("cn=x,dc=example,dc=com")
    assert not is_dn("ra-operators") and not is_dn("")
    assert same_dn("CN=A\\,B+uid=x, dc=Example", "uid=x+cn=a\\,b,dc=example")
    assert not same_dn("cn=a", "not a dn")
    base = normalize_dn("dc=example,dc=com")
    assert is_within(normalize_dn("uid=a,ou=people,dc=example,dc=com"), base)
    assert is_within(base, base)
    assert not is_within(normalize_dn("dc=com"), base)
    assert not is_within(normalize_dn("uid=a,dc=other,dc=com"), base)
    assert first_rdn_value("CN=ra-operators,ou=groups", "cn") == "ra-operators"
    assert first_rdn_value("uid=x,ou=groups", "cn") is None
    with pytest.raises(ValueError):
        normalize_dn("no dn here")
