"""Each SSO block of the shipped Debian site file, rendered into Debian's apache2.

``apache/openxpki-py.conf`` picks Basic (no Define), Kerberos
(``OPENXPKI_PY_SSO_KERBEROS``: ``apache/sso-kerberos.conf``) or OpenID
Connect (``OPENXPKI_PY_SSO_OIDC``: ``apache/sso-oidc.conf``).  With each, a
client without SSO gets no page of the application, while the token agent's
API, the OCSP responder and /crl/ answer it.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.kdc import REALM
from support.oidc_provider import OIDCProvider, free_port, start_provider

pytestmark = pytest.mark.slow

MODULES = Path("/usr/lib/apache2/modules")


def request(site: Any, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = site.connection()
    try:
        conn.request(method, path, body=body, headers={"Accept": "text/html", **(headers or {})})
        resp = conn.getresponse()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():  # repeated headers (WWW-Authenticate) one per line
            merged[name.lower()] = merged[name.lower()] + "\n" + value if name.lower() in merged else value
        return resp.status, merged, resp.read()
    finally:
        conn.close()


@pytest.fixture
def providers() -> Iterator[list[OIDCProvider]]:
    started: list[OIDCProvider] = []
    yield started
    for provider in started:
        provider.stop()


def kerberos_prelude(mit_kdc: Callable[..., Any]) -> str:
    kdc = mit_kdc()
    keytab = kdc.add_service_keytab("HTTP/localhost", kdc.folder / "http.keytab")
    shutil.chown(keytab, group="www-data")
    keytab.chmod(0o640)
    return "\n".join([f"LoadModule auth_gssapi_module {MODULES}/mod_auth_gssapi.so",
                      "Define OPENXPKI_PY_SSO_KERBEROS", f'Define OPENXPKI_PY_KEYTAB "{keytab}"',
                      "Define OPENXPKI_PY_GSSAPI_LOCALNAME Off"])


def oidc_prelude(folder: Path, providers: list[OIDCProvider]) -> tuple[str, str]:
    port = free_port()
    secret = secrets.token_urlsafe(24)
    client = {"client_id": "openxpki-py", "client_secret": secret,
              "redirect_uris": ["https://127.0.0.1/oidc/redirect"]}
    providers.append(start_provider(folder / "idp", port=port, clients=[client], accounts={}))
    secrets_file = folder / "oidc.secrets"
    secrets_file.write_text(f'OIDCClientSecret "{secret}"\nOIDCCryptoPassphrase "{secrets.token_urlsafe(24)}"\n')
    secrets_file.chmod(0o600)
    prelude = "\n".join([f"LoadModule auth_openidc_module {MODULES}/mod_auth_openidc.so",
                         "Define OPENXPKI_PY_SSO_OIDC",
                         f"Define OPENXPKI_PY_OIDC_METADATA_URL {providers[-1].metadata_url}",
                         "Define OPENXPKI_PY_OIDC_CLIENT_ID openxpki-py",
                         "Define OPENXPKI_PY_OIDC_REDIRECT_URI /oidc/redirect",
                         f'Define OPENXPKI_PY_OIDC_SECRETS "{secrets_file}"'])
    return prelude, providers[-1].issuer


@pytest.mark.parametrize("kind", ["basic", "kerberos", "oidc"])
def test_pages_need_sso_and_api_ocsp_crl_do_not(kind: str, apache_site_factory: Callable[..., Any],
                                                mit_kdc: Callable[..., Any], providers: list[OIDCProvider],
                                                tmp_path: Path) -> None:
    issuer = ""
    if kind == "basic":
        prelude, config = "", {}
    elif kind == "kerberos":
        prelude, config = kerberos_prelude(mit_kdc), {"auth": {"sso": {"realms": [REALM]}}}
    else:
        prelude, issuer = oidc_prelude(tmp_path, providers)
        config = {"auth": {"sso": {"attributes": {"display_name": "OIDC_CLAIM_name"}}}}
    site = apache_site_factory(debian_site=True, prelude=prelude,
                               config={"web": {"session": {"cookie_secure": True}}, **config})

    for path in ("/openxpki/", "/token", "/openxpki/login"):
        status, headers, body = request(site, "GET", path)
        if kind == "oidc":  # off to the provider, nothing of the application
            assert status == 302 and headers["location"].startswith(issuer + "/auth?"), (path, status, headers)
        else:
            assert status == 401, (path, status)
            scheme = "Negotiate" if kind == "kerberos" else "Basic"
            assert any(v.startswith(scheme) for v in headers["www-authenticate"].split("\n"))
        assert "openxpki_session" not in headers.get("set-cookie", "")  # the application never ran

    # The token agent's API: the application's own JSON refusal, not Apache's challenge.
    status, headers, body = request(site, "POST", "/openxpki/api/v1/enroll", b'{"code": "AAAAA-BBBBB"}',
                                    {"Content-Type": "application/json", "Accept": "application/json"})
    assert body.startswith(b'{"error":{"code":"enroll.'), (status, body[:300])
    assert "www-authenticate" not in headers

    # The OCSP responder: an OCSP answer (malformedRequest) to anyone.
    status, headers, body = request(site, "POST", "/openxpki/ocsp", b"\x30\x03junk",
                                    {"Content-Type": "application/ocsp-request"})
    assert status == 200 and headers["content-type"] == "application/ocsp-response", (status, body[:300])
    assert body == bytes.fromhex("30030a0101")

    # /crl/: the file, to anyone.
    (site.root / "crl" / "test-pki.crl").write_bytes(b"0\x00")
    status, _, body = request(site, "GET", "/crl/test-pki.crl")
    assert status == 200 and body == b"0\x00"

    if kind == "basic":  # and with the SSO, the pages are there
        assert site.browser("alice").get("/openxpki/").status in (200, 303)
