"""One person, one identity: SSO logins in other letter cases, through real Apache and slapd.

The attack run found: with Basic auth against LDAP (mod_authnz_ldap, which
matches ``uid`` without regard to case) ``BOB`` and ``Bob`` logged in with
bob's password as two people — two approvals of one request by one RA
Operator — and with an SSO that treats case as distinct (htpasswd) a
separate account ``ALICE`` got alice's certificates and ``BOB`` got bob's
RA Operator role from ``contrib/auth/check-ldap-group``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ldap
import pytest
from sqlalchemy import select
from support.apache import DEFAULT_PASSWORD
from support.slapd import SlapdServer

from openxpki_py.db.schema import audit_log, web_session, workflow

REPO = Path(__file__).resolve().parents[2]
CHECK_LDAP_GROUP = REPO / "contrib" / "auth" / "check-ldap-group"
BOB_PASSWORD = "bob-ldap-password"

pytestmark = pytest.mark.slow


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def _sessions(site: Any) -> list[tuple[str, str | None]]:
    return site.read_db(lambda c: sorted((r.login, r.role_name) for r in c.execute(select(web_session))))


def test_case_distinct_sso_accounts_are_not_the_directory_person(apache_site_factory: Callable[..., Any]) -> None:
    # htpasswd: ALICE and BOB are accounts of their own, with their own passwords.
    site = apache_site_factory(users={"alice": DEFAULT_PASSWORD, "ALICE": "other", "BOB": "other"}, config={
        "auth": {"roles": {"User": {"command": ["/bin/true"]}, "RA Operator": {"command": ["/bin/true"]}}}})
    for login in ("ALICE", "BOB"):
        refused = site.browser(login, password="other").get("/token")
        assert refused.status == 403, refused.body
        assert "does not match exactly one person" in refused.body
    assert site.browser("alice").get("/token").status == 303
    # Only alice holds a session and a personalization; the refusals are audited.
    assert _sessions(site) == [("alice", "User")]
    owners = site.read_db(lambda c: [r.creator for r in c.execute(select(workflow))])
    assert owners == ["alice"]
    refusals = site.read_db(lambda c: [r.actor for r in c.execute(
        select(audit_log).where(audit_log.c.event == "auth.login.refused"))])
    assert sorted(refusals) == ["ALICE", "BOB"]


@pytest.fixture
def ldap_sso_site(apache_site_factory: Callable[..., Any], slapd: SlapdServer) -> Callable[..., Any]:
    """A site whose SSO is mod_authnz_ldap against slapd, roles from check-ldap-group."""
    conn = ldap.initialize(slapd.uri)
    conn.simple_bind_s(slapd.bind_dn, slapd.bind_password)
    conn.modify_s(f"uid=bob,ou=people,{slapd.base_dn}",
                  [(ldap.MOD_REPLACE, "userPassword", [BOB_PASSWORD.encode()])])
    conn.unbind_s()

    def start(login_case: str) -> Any:
        def config(root: Path) -> dict[str, Any]:
            check = slapd.write_check_config(root / "check-ldap-group.conf", bind_dn="", bind_password_file="")
            check.chmod(0o644)
            return {
                "directory": {"backend": "ldap", "ldif_file": None, "base_dn": slapd.base_dn,
                              "ldap": {"uri": slapd.uri, "starttls": False}},
                "auth": {"sso": {"login_case": login_case}, "roles": {
                    "User": {"command": ["/bin/true"]},
                    "RA Operator": {"command": [str(CHECK_LDAP_GROUP), str(check)], "timeout": 10}}},
            }

        include = f"""
<IfModule !ldap_module>
    LoadModule ldap_module '${{MOD_WSGI_MODULES_DIRECTORY}}/mod_ldap.so'
</IfModule>
<IfModule !authnz_ldap_module>
    LoadModule authnz_ldap_module '${{MOD_WSGI_MODULES_DIRECTORY}}/mod_authnz_ldap.so'
</IfModule>
<LocationMatch "^/(?!crl/|openxpki/api/)">
    AuthType Basic
    AuthName "openxpki-py"
    AuthBasicProvider ldap
    AuthLDAPURL "{slapd.uri}ou=people,{slapd.base_dn}?uid"
    Require valid-user
</LocationMatch>
"""
        return apache_site_factory(config=config, basic_auth=False, extra_include=include)

    return start


def _choose_ra_operator(browser: Any) -> Any:
    page = browser.get("/openxpki/login")
    assert page.status == 200, page.body
    return browser.post("/openxpki/login", {"role": "RA Operator", "csrf_token": _csrf(page.body)})


def test_ldap_sso_spellings_of_bob_are_refused_by_default(ldap_sso_site: Callable[..., Any]) -> None:
    site = ldap_sso_site("preserve")
    # mod_authnz_ldap lets every spelling in with bob's password ...
    for login in ("BOB", "Bob"):
        refused = site.browser(login, password=BOB_PASSWORD).get("/openxpki/login")
        # ... and the application refuses what is not the directory's spelling.
        assert refused.status == 403 and "does not match exactly one person" in refused.body
    assert _choose_ra_operator(site.browser("bob", password=BOB_PASSWORD)).status == 303
    assert _sessions(site) == [("bob", "RA Operator")]


def test_ldap_sso_with_login_case_lower_is_one_person(ldap_sso_site: Callable[..., Any]) -> None:
    site = ldap_sso_site("lower")
    for login in ("BOB", "Bob"):
        granted = _choose_ra_operator(site.browser(login, password=BOB_PASSWORD))
        assert granted.status == 303, granted.body
    # Two browsers, one person: both sessions are bob's, so four eyes see one pair.
    assert _sessions(site) == [("bob", "RA Operator"), ("bob", "RA Operator")]
    grants = site.read_db(lambda c: [r.actor for r in c.execute(
        select(audit_log).where(audit_log.c.event == "auth.role.grant"))])
    assert grants == ["bob", "bob"]
