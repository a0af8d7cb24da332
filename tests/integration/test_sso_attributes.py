"""ClearTrust-style SSO in a real Apache: name, mail and groups as environment
variables set by the SSO module, or as headers from a trusted reverse proxy.

The SSO module is stood in for by Apache itself: Basic auth authenticates,
then per-user rewrite rules set the environment variables a
ClearTrust/SiteMinder-style module sets.  The proxy case runs a second,
real Apache (mod_proxy + mod_headers ``RequestHeader set``) in front.  The
login always comes from REMOTE_USER; the groups decide the operator role
(``auth.roles.<role>.groups``), and a header sent by anyone but the trusted
proxy is ignored.
"""

from __future__ import annotations

import base64
import http.client
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.apache import DEFAULT_PASSWORD, HTTPResult
from support.sso_proxy import start_header_proxy

pytestmark = pytest.mark.slow

# A ClearTrust-like module: after it authenticated the user, it sets these.
# (Per-directory rewrite rules run in the fixup phase, after authentication,
# so %{REMOTE_USER} is known there; <If> is evaluated before it.)
SSO_MODULE = """
<Location "/openxpki">
    RewriteEngine On
    RewriteCond %{REMOTE_USER} =bob
    RewriteRule ^ - "[E=SSO_NAME:Bob the Builder,E=SSO_MAIL:bob@sso.example.com,E=SSO_GROUPS:staff;pki-ra]"
    RewriteCond %{REMOTE_USER} =alice
    RewriteRule ^ - [E=SSO_GROUPS:staff;pki-ra-readers]
</Location>
"""


def sso_config(root: Path) -> dict[str, Any]:
    # A handler that shows what it was handed (stderr goes to the audit row), and grants.
    report = root / "report-sso"
    report.write_text('#!/bin/sh\necho "mail=$OPENXPKI_SSO_MAIL groups=$OPENXPKI_SSO_GROUPS" >&2\nexit 0\n')
    report.chmod(0o755)
    return {
        "auth": {
            "sso": {"attributes": {"display_name": "SSO_NAME", "mail": "SSO_MAIL", "groups": "SSO_GROUPS"},
                    "groups_separator": ";",
                    "header_attributes": {"display_name": "X-SSO-Name", "groups": "X-SSO-Groups"}},
            "roles": {"User": {"command": ["/bin/true"]},
                      "RA Operator": {"groups": ["pki-ra"]},
                      "CA Operator": {"groups": ["pki-ca", "pki-ra"], "command": [str(report)]}},
        },
        "web": {"trusted_proxies": ["127.0.0.1"]},
    }


def csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


def offered(html: str) -> list[str]:
    return re.findall(r'name="role" value="([^"]+)"', html)


def test_name_mail_and_groups_from_the_sso_environment(apache_site_factory: Callable[..., Any]) -> None:
    site = apache_site_factory(config=sso_config, extra_include=SSO_MODULE)
    bob = site.browser("bob")
    page = bob.get("/openxpki/login")
    assert page.status == 200 and "Bob the Builder" in page.body
    assert offered(page.body) == ["User", "RA Operator", "CA Operator"]
    r = bob.post("/openxpki/login", {"role": "RA Operator", "csrf_token": csrf(page.body)})
    assert r.status == 303
    grant = site.audit()[-1]
    assert (grant["event"], grant["actor"], grant["role_name"]) == ("auth.role.grant", "bob", "RA Operator")
    assert grant["details"]["reason"] == "SSO group pki-ra"
    page = bob.get("/openxpki/login")  # the token changes with the role
    r = bob.post("/openxpki/login", {"role": "CA Operator", "csrf_token": csrf(page.body)})
    assert r.status == 303
    grant = site.audit()[-1]
    assert grant["details"]["reason"] == "SSO group pki-ra; exit 0"
    assert grant["details"]["stderr"] == "mail=bob@sso.example.com groups=staff;pki-ra"

    # alice's "pki-ra-readers" is not "pki-ra": the operator roles are neither offered nor granted.
    alice = site.browser("alice")
    assert alice.get("/openxpki/login").status == 303  # one role offered (User): taken without asking
    home = alice.get("/openxpki/")
    assert home.status == 200 and "alice" in home.body
    r = alice.post("/openxpki/login", {"role": "RA Operator", "csrf_token": csrf(home.body)})
    assert r.status == 403
    refused = site.audit()[-1]
    assert (refused["event"], refused["actor"]) == ("auth.role.refused", "alice")


def _direct(site: Any, path: str, user: str, headers: dict[str, str], *, source: str) -> HTTPResult:
    """One request to the site from ``source`` (127.0.0.2 is not the trusted proxy)."""
    token = base64.b64encode(f"{user}:{DEFAULT_PASSWORD}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Authorization": f"Basic {token}", **headers})
        resp = conn.getresponse()
        return HTTPResult(resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def test_groups_from_a_trusted_proxy_count_and_spoofed_ones_do_not(
        apache_site_factory: Callable[..., Any], tmp_path: Path) -> None:
    site = apache_site_factory(config=sso_config)  # no SSO module here: the proxy sends the attributes
    proxy = start_header_proxy(tmp_path, backend_port=site.port,
                               headers={"X-SSO-Groups": "staff;pki-ra", "X-SSO-Name": "Bob via Proxy"})
    try:
        token = base64.b64encode(f"bob:{DEFAULT_PASSWORD}".encode()).decode()
        via_proxy = proxy.get("/openxpki/login", {"Authorization": f"Basic {token}",
                                                  "X-SSO-Groups": "pki-ca"})  # the proxy overwrites it
        assert via_proxy.status == 200, via_proxy.body[:500]
        assert "Bob via Proxy" in via_proxy.body
        assert offered(via_proxy.body) == ["User", "RA Operator", "CA Operator"]

        # The same headers sent straight to Apache, from an address that is not the proxy: ignored.
        spoofed = _direct(site, "/openxpki/login", "bob",
                          {"X-SSO-Groups": "staff;pki-ra", "X-SSO-Name": "Bob via Proxy"}, source="127.0.0.2")
        assert spoofed.status in (200, 303)
        assert "Bob via Proxy" not in spoofed.body and offered(spoofed.body) in ([], ["User"])
        # ... and the login never comes from a header, proxy or not.
        assert proxy.get("/openxpki/login", {"X-Remote-User": "bob"}).status == 401
    finally:
        proxy.stop()
