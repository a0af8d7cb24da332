"""The shipped Debian site file (apache/openxpki-py.conf) in Debian's own
apache2: TLS, mod_wsgi daemon mode, Basic auth, the /token rewrite, /crl/."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(apache_module_site_factory: Callable[..., Any]) -> Any:
    # The site runs over https, so the default (Secure) cookie is used as shipped.
    # One site for the module: no test here looks at what another left in its database.
    return apache_module_site_factory(debian_site=True, config={"web": {"session": {"cookie_secure": True}}})


def test_token_over_tls_reaches_the_deep_link_without_menu(site: Any) -> None:
    assert site.browser().get("/token").status == 401
    alice = site.browser("alice")
    r = alice.get("/token")
    assert r.status == 303, r.body
    location = r.headers["Location"].removeprefix(site.base_url)
    assert re.fullmatch(r"/openxpki/deeplink/workflow/\d+", location)
    assert "Secure" in r.headers["Set-Cookie"]
    page = alice.get(location)
    assert page.status == 200 and 'id="workflow-type">web_test_enrollment<' in page.body
    assert 'aria-label="Main menu"' not in page.body


def test_app_requires_sso_and_crl_does_not(site: Any) -> None:
    assert site.browser().get("/openxpki/").status == 401
    assert site.browser("bob").get("/openxpki/").status == 200
    (site.root / "crl" / "test-pki.crl").write_bytes(b"0\x00")
    assert site.browser().get("/crl/test-pki.crl").status == 200


def test_plain_http_redirects_to_https_except_crl(site: Any) -> None:
    (site.root / "crl" / "test-pki.crl").write_bytes(b"0\x00")
    conn = site.connection(plain_http=True)
    try:
        conn.request("GET", "/openxpki/", headers={"Host": "pki.example.com"})
        r = conn.getresponse()
        r.read()
        assert r.status == 301 and r.headers["Location"] == "https://pki.example.com/openxpki/"
        conn.request("GET", "/crl/test-pki.crl")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"0\x00"
    finally:
        conn.close()


def test_trace_is_refused_and_the_server_names_no_version(site: Any) -> None:
    conn = site.connection()
    try:
        conn.request("TRACE", "/openxpki/", headers={"Cookie": "openxpki_session=secret-cookie"})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
    finally:
        conn.close()
    assert r.status == 405 and "secret-cookie" not in body
    assert r.getheader("Server") == "Apache"


def test_ocsp_answers_over_plain_http_and_nothing_else_of_the_app_does(site: Any) -> None:
    conn = site.connection(plain_http=True)
    try:
        conn.request("POST", "/openxpki/ocsp", body=b"\x30\x03junk",
                     headers={"Host": "pki.example.com", "Content-Type": "application/ocsp-request"})
        r = conn.getresponse()
        body = r.read()
        # A (malformedRequest) OCSP answer over http, not a redirect to https.
        assert r.status == 200 and r.headers["Content-Type"] == "application/ocsp-response"
        assert body == bytes.fromhex("30030a0101")
        conn.request("GET", "/openxpki/login", headers={"Host": "pki.example.com"})
        r = conn.getresponse()
        r.read()
        assert r.status == 301  # the rest of the application stays behind TLS
    finally:
        conn.close()
