"""The web app in a real Apache (mod_wsgi-express), Basic auth as the SSO,
the shipped include and /token rewrite rule."""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from openxpki_py.db.schema import audit_log, web_session, workflow

REPO = Path(__file__).resolve().parents[2]
AUTH_DATA = REPO / "tests" / "data" / "auth"
XSS = "<script>alert('owned')</script>"

pytestmark = pytest.mark.slow


def roles_config(handler: str | Path = AUTH_DATA / "grant-bob") -> dict[str, Any]:
    """User for everyone via /bin/true; both operator roles via ``handler``."""
    return {"auth": {
        "sso": {"attributes": {"display_name": "OPENXPKI_TEST_DISPLAY_NAME"}},
        "roles": {
            "User": {"command": ["/bin/true"]},
            "RA Operator": {"command": [str(handler)], "timeout": 5},
            "CA Operator": {"command": [str(handler)], "timeout": 5},
        },
    }}


@pytest.fixture
def site(apache_site_factory: Callable[..., Any]) -> Any:
    return apache_site_factory(config=roles_config())


def csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, f"no CSRF token in:\n{html[:2000]}"
    return m.group(1)


def choose_role(browser: Any, role: str) -> Any:
    token = csrf(browser.get("/openxpki/login").body)
    return browser.post("/openxpki/login", {"role": role, "csrf_token": token})


def test_unauthenticated_requests_get_401(site: Any) -> None:
    anonymous = site.browser()
    for path in ("/openxpki/", "/openxpki/login", "/token"):
        assert anonymous.get(path).status == 401
    assert site.browser("alice", password="wrong").get("/openxpki/").status == 401


def test_without_sso_the_app_says_the_server_did_not_authenticate(apache_site_factory: Callable[..., Any]) -> None:
    site = apache_site_factory(basic_auth=False)
    r = site.browser().get("/openxpki/", headers={"X-Remote-User": "alice", "Remote-User": "alice"})
    assert r.status == 401
    assert "web server did not authenticate you" in r.body


def test_client_identity_headers_do_not_change_the_user(site: Any) -> None:
    bob = site.browser("bob")
    r = bob.get("/openxpki/login", headers={"X-Remote-User": "alice", "Remote-User": "alice"})
    assert r.status == 200
    assert '<strong class="display-name">bob</strong>' in r.body and "alice" not in r.body
    logins = site.read_db(lambda c: [row.login for row in c.execute(select(web_session))])
    assert logins == ["bob"]


def test_token_deep_link_starts_the_workflow_without_menu(site: Any) -> None:
    alice = site.browser("alice")
    r = alice.get("/token")
    assert r.status == 303
    assert re.fullmatch(r"/openxpki/deeplink/workflow/\d+", r.headers["Location"].removeprefix(site.base_url))
    page = alice.get(r.headers["Location"].removeprefix(site.base_url))
    assert page.status == 200
    assert 'id="workflow-type">web_test_enrollment<' in page.body
    assert 'id="workflow-state">WAIT_FOR_USER<' in page.body
    assert 'aria-label="Main menu"' not in page.body
    rows = site.read_db(lambda c: c.execute(select(workflow.c.creator, workflow.c.creator_role)).all())
    assert [tuple(r) for r in rows] == [("alice", "User")]
    grant = [a for a in site.audit() if a["event"] == "auth.role.grant"]
    assert [(a["actor"], a["role_name"]) for a in grant] == [("alice", "User")]


def test_role_choice_grant_and_refusal(site: Any) -> None:
    alice = site.browser("alice")
    r = alice.get("/openxpki/")
    assert r.status == 303 and r.headers["Location"].endswith("/openxpki/login?next=/")
    r = choose_role(alice, "User")
    assert r.status == 303
    home = alice.get("/openxpki/").body
    assert "Personalize SmartCard" in home and "Audit log" not in home

    r = choose_role(alice, "RA Operator")
    assert r.status == 403 and "was not granted" in r.body
    assert "not in the group" not in r.body  # the script's stderr is for the log only
    refused = site.audit()[-1]
    assert (refused["event"], refused["outcome"], refused["actor"], refused["role_name"]) == (
        "auth.role.refused", "refused", "alice", "RA Operator")
    assert "alice is not in the group" in refused["details"]["stderr"]
    assert "alice is not in the group" in site.error_log()
    home = alice.get("/openxpki/").body
    assert "Audit log" not in home and "Personalize SmartCard" in home
    assert alice.get("/openxpki/audit").status == 403


def test_operator_gets_the_operator_menu(site: Any) -> None:
    bob = site.browser("bob")
    assert choose_role(bob, "RA Operator").status == 303
    home = bob.get("/openxpki/")
    assert '<strong class="role">RA Operator</strong>' in home.body
    assert "Audit log" in home.body and "Personalize SmartCard" not in home.body
    audit = bob.get("/openxpki/audit")
    assert audit.status == 200 and "auth.role.grant" in audit.body


def test_post_without_or_with_wrong_csrf_token_is_403(site: Any) -> None:
    bob = site.browser("bob")
    choose_role(bob, "User")
    before = site.audit()
    for form in ({"role": "RA Operator"}, {"role": "RA Operator", "csrf_token": "forged"}):
        r = bob.post("/openxpki/login", form)
        assert r.status == 403 and "security token" in r.body
    assert bob.post("/openxpki/logout", {"csrf_token": "forged"}).status == 403
    assert site.audit() == before  # no handler ran, no role changed
    assert '<strong class="role">User</strong>' in bob.get("/openxpki/").body


def test_session_cookie_replayed_by_another_user_starts_a_new_login(site: Any) -> None:
    bob = site.browser("bob")
    choose_role(bob, "RA Operator")
    assert bob.get("/openxpki/audit").status == 200
    cookie = dict(bob.cookies)
    mallory = site.browser("alice")
    mallory.cookies.update(cookie)
    r = mallory.get("/openxpki/audit")
    assert r.status == 303 and "/openxpki/login" in r.headers["Location"]
    assert mallory.cookies["openxpki_session"] != cookie["openxpki_session"]
    # bob's session was ended, not shared: his cookie no longer works either.
    assert bob.get("/openxpki/audit").status == 303
    assert site.audit()[-1]["details"] == {"reason": "sso_user_changed"}


def test_display_name_from_sso_is_escaped(apache_site_factory: Callable[..., Any]) -> None:
    include = f'<Location "/openxpki">\n    SetEnv OPENXPKI_TEST_DISPLAY_NAME "{XSS}"\n</Location>'
    site = apache_site_factory(config=roles_config(), extra_include=include)
    alice = site.browser("alice")
    page = alice.get("/openxpki/login")
    assert page.status == 200
    assert XSS not in page.body
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in page.body
    choose_role(alice, "User")
    assert XSS not in alice.get("/openxpki/").body


def test_cookie_flags_under_apache(site: Any) -> None:
    r = site.browser("bob").get("/openxpki/login")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # this test site turned it off: plain http on 127.0.0.1


def test_real_check_ldap_group_against_slapd(apache_site_factory: Callable[..., Any], slapd: Any) -> None:
    script = REPO / "contrib" / "auth" / "check-ldap-group"
    if not script.exists():
        pytest.skip("contrib/auth/check-ldap-group is not there yet")

    def config(root: Path) -> dict[str, Any]:
        password = root / "ldap.password"
        shutil.copyfile(slapd.bind_password_file, password)
        password.chmod(0o600)
        conf = slapd.write_check_config(root / "check-ldap-group.conf", bind_password_file=str(password))
        cfg = roles_config(script)
        for role in ("RA Operator", "CA Operator"):
            cfg["auth"]["roles"][role]["command"].append(str(conf))
        return cfg

    site = apache_site_factory(config=config)
    bob = site.browser("bob")  # in cn=ra-operators
    assert choose_role(bob, "RA Operator").status == 303
    assert "Audit log" in bob.get("/openxpki/").body
    alice = site.browser("alice")
    assert choose_role(alice, "RA Operator").status == 403
    refused = site.audit()[-1]
    assert refused["event"] == "auth.role.refused" and refused["details"]["exit_code"] == 1


def _trace(site: Any) -> tuple[int, str, str]:
    conn = site.connection()
    try:
        conn.request("TRACE", "/openxpki/", headers={"Authorization": "Basic YWxpY2U6YWxpY2U=",
                                                     "Cookie": "openxpki_session=secret-cookie"})
        r = conn.getresponse()
        return r.status, r.getheader("Server", ""), r.read().decode(errors="replace")
    finally:
        conn.close()


def test_trace_is_refused_and_the_server_names_no_version(site: Any) -> None:
    # TRACE echoed Authorization and Cookie back (cross-site tracing).
    status, server, body = _trace(site)
    assert status == 405
    assert "secret-cookie" not in body and "YWxpY2U6YWxpY2U=" not in body
    assert server == "Apache"


def _with_person(login: str) -> Callable[[Path], dict[str, Any]]:
    """Site config whose LDIF directory is the demo's plus ``login`` (written into the site's folder)."""
    def config(root: Path) -> dict[str, Any]:
        ldif = root / "people.ldif"
        demo = (REPO / "contrib" / "ldap" / "demo.ldif").read_text(encoding="utf-8")
        def b64(text: str) -> str:  # LDIF carries non-ASCII values base64-encoded ("attr:: …")
            return base64.b64encode(text.encode()).decode()

        name = b64(login)
        ldif.write_text(demo + f"\ndn:: {b64(f'uid={login},ou=people,dc=example,dc=com')}\n"
                        f"objectClass: person\nobjectClass: inetOrgPerson\nuid:: {name}\ncn:: {name}\nsn:: {name}\n", encoding="utf-8")
        return {**roles_config(), "directory": {"ldif_file": str(ldif)}}
    return config


def test_latin1_login_is_not_the_utf8_user(apache_site_factory: Callable[..., Any]) -> None:
    # Two htpasswd accounts: the UTF-8 and the latin-1 bytes of "jürgen".
    site = apache_site_factory(config=_with_person("jürgen"),
                               users={"jürgen": "pw-utf8", "jürgen".encode("latin-1"): "pw-l1"})
    utf8 = site.browser("jürgen", password="pw-utf8")
    assert utf8.get("/openxpki/login").status == 200
    latin1 = site.browser("jürgen".encode("latin-1"), password="pw-l1")
    refused = latin1.get("/openxpki/login")
    assert refused.status == 403 and "sign-on name cannot be used" in refused.body
    logins = site.read_db(lambda c: [row.login for row in c.execute(select(web_session))])
    assert logins == ["jürgen"]


def test_operator_verifies_the_audit_chain_on_the_audit_page(site: Any) -> None:
    bob = site.browser("bob")
    assert choose_role(bob, "CA Operator").status == 303
    page = bob.get("/openxpki/audit")
    verified = bob.post("/openxpki/audit/verify", {"csrf_token": csrf(page.body)})
    assert verified.status == 303
    assert "Audit chain intact:" in bob.get("/openxpki/audit").body
    # Someone with SQL access edits a row: the page says where the chain breaks.
    def tamper(conn: Any) -> None:
        first = conn.execute(select(audit_log.c.id).order_by(audit_log.c.id)).scalar()
        conn.execute(update(audit_log).where(audit_log.c.id == first).values(actor="mallory"))
        conn.commit()
    site.read_db(tamper)
    page = bob.get("/openxpki/audit")
    bob.post("/openxpki/audit/verify", {"csrf_token": csrf(page.body)})
    broken = bob.get("/openxpki/audit").body
    assert "AUDIT CHAIN BROKEN: row 1:" in broken
    # Without the CSRF token nothing runs.
    assert bob.post("/openxpki/audit/verify", {}).status == 403
