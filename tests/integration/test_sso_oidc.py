"""SSO with OpenID Connect: a real OpenID provider (oidc-provider under node),
mod_auth_openidc in Apache with the shipped ``apache/sso-oidc.conf``, Chromium.

The user signs in at the provider; the claims become the identity's name,
mail and groups (``auth.sso.attributes``), the groups decide the operator
role, /token starts the deep link's workflow, and logging out ends the
application's, mod_auth_openidc's and the provider's sessions.  The agent's
API, OCSP and /crl/ stay outside SSO.
"""

from __future__ import annotations

import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from support.browser import screenshot
from support.oidc_provider import OIDCProvider, free_port, start_provider

from openxpki_py.db.schema import web_session

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "openxpki-py"

pytestmark = pytest.mark.slow

ACCOUNTS = {
    "alice": {"password": "alice-idp-password",
              "claims": {"preferred_username": "alice", "name": "Alice from the IdP", "email": "alice@idp.example.com",
                         "email_verified": True, "groups": ["staff", "pki-ra"]}},
    "mallory": {"password": "mallory-idp-password",
                "claims": {"preferred_username": "mallory", "name": "Mallory", "groups": ["pki-ra"]}},
}


class OIDCSite:
    def __init__(self, site: Any, provider: OIDCProvider) -> None:
        self.site, self.provider = site, provider
        self.base = site.base_url


@pytest.fixture
def oidc_site(apache_site_factory: Callable[..., Any], tmp_path: Path) -> Iterator[OIDCSite]:
    provider_port = free_port()
    client_secret = secrets.token_urlsafe(24)
    secrets_file = tmp_path / "oidc.secrets"  # read by Apache as root at start, like /etc/apache2/…
    secrets_file.write_text(f'OIDCClientSecret "{client_secret}"\n'
                            f'OIDCCryptoPassphrase "{secrets.token_urlsafe(24)}"\n')
    secrets_file.chmod(0o600)
    include = "\n".join([
        f"Define OPENXPKI_PY_OIDC_METADATA_URL http://127.0.0.1:{provider_port}/.well-known/openid-configuration",
        f"Define OPENXPKI_PY_OIDC_CLIENT_ID {CLIENT_ID}",
        "Define OPENXPKI_PY_OIDC_REDIRECT_URI /oidc/redirect",
        f'Define OPENXPKI_PY_OIDC_SECRETS "{secrets_file}"',
        f'Include "{REPO / "apache" / "sso-oidc.conf"}"',
    ])
    config = {"auth": {
        "sso": {"attributes": {"display_name": "OIDC_CLAIM_name", "mail": "OIDC_CLAIM_email",
                               "groups": "OIDC_CLAIM_groups"},
                "groups_separator": ","},
        "roles": {"User": {"command": ["/bin/true"]}, "RA Operator": {"groups": ["pki-ra"]}},
    }}

    def personalization(root: Path, cfg: dict[str, Any]) -> None:
        # /token starts the real smartcard personalization (the shipped workflows).
        cfg["web"]["deep_link"] = {"workflow": "smartcard_personalization", "role": "User"}
        cfg["workflow"] = {}

    site = apache_site_factory(basic_auth=False, extra_include=include, config=config, edit_config=personalization)
    # The logout link needs the site's address, known only now (the app reads
    # its config on the first request): mod_auth_openidc ends its session and
    # the provider's, and the provider returns to this registered address.
    settings = yaml.safe_load(site.config_path.read_text())
    back = urllib.parse.quote(f"{site.base_url}/openxpki/", safe="")
    settings["auth"]["sso"]["logout_url"] = f"/oidc/redirect?logout={back}"
    site.config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    # mod_auth_openidc reads the provider's metadata on the first request, so the
    # provider can start once the site's address (the redirect URI) is known.
    client = {"client_id": CLIENT_ID, "client_secret": client_secret,
              "redirect_uris": [f"{site.base_url}/oidc/redirect"],
              "post_logout_redirect_uris": [f"{site.base_url}/openxpki/"],
              "grant_types": ["authorization_code"], "response_types": ["code"]}
    provider = start_provider(tmp_path / "idp", port=provider_port, clients=[client], accounts=ACCOUNTS)
    try:
        yield OIDCSite(site, provider)
    finally:
        provider.stop()


def sign_in_at_provider(page: Any, provider: OIDCProvider, login: str, password: str) -> None:
    assert page.url.startswith(provider.issuer + "/interaction/"), page.url
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def _status(url: str, **kw: Any) -> tuple[int, str, str]:
    """(status, Location, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, **kw), timeout=30) as resp:
            return resp.status, resp.headers.get("Location", ""), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", ""), exc.read().decode(errors="replace")


def test_oidc_login_claims_roles_token_and_logout(oidc_site: OIDCSite, chromium: Any) -> None:
    site, provider, base = oidc_site.site, oidc_site.provider, oidc_site.base
    # Without a session every page goes to the provider; the agent's API does not.
    status, location, _ = _status(f"{base}/openxpki/", headers={"Accept": "text/html"})  # (else 401: no browser)
    assert status == 302 and location.startswith(provider.issuer + "/auth?"), (status, location)
    status, _, body = _status(f"{base}/openxpki/api/v1/enroll", method="POST", data=b'{"code": "X"}',
                              headers={"Content-Type": "application/json", "Accept": "text/html"})
    # The application's own JSON refusal of a bad code, not a redirect to the provider.
    assert status in (400, 401, 404) and '{"error":{"code":"enroll.' in body, (status, body)

    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{base}/token")
    sign_in_at_provider(page, provider, "alice", "wrong password")
    assert "Wrong login or password" in page.text_content("#message")
    sign_in_at_provider(page, provider, "alice", ACCOUNTS["alice"]["password"])
    page.wait_for_url(re.compile(r"/openxpki/deeplink/workflow/\d+$"))
    assert "Alice from the IdP" in page.content()
    page.click("#get-code")  # the personalization hands out its enrollment code for the agent
    page.wait_for_load_state()
    page.click("#code-details summary")
    assert re.fullmatch(r"[A-Z2-7]{5}(-[A-Z2-7]{1,5}){4}", page.locator("#enrollment-code").inner_text())
    screenshot(page, "sso-oidc-token.png")
    logins = site.read_db(lambda c: [row.login for row in c.execute(select(web_session))])
    assert logins == ["alice"]

    # The groups claim offers and grants the operator role.
    page.goto(f"{base}/openxpki/login")
    assert page.locator("button[name=role]").all_text_contents() == ["User", "RA Operator"]
    page.click("button[name=role][value='RA Operator']")
    page.wait_for_load_state()
    grant = site.audit()[-1]
    assert (grant["event"], grant["actor"], grant["role_name"]) == ("auth.role.grant", "alice", "RA Operator")
    assert grant["details"]["reason"] == "SSO group pki-ra"

    # Log out of the application, then of the SSO (mod_auth_openidc and the provider).
    page.goto(f"{base}/openxpki/")
    page.click("form[action$='/logout'] button")
    page.wait_for_load_state()
    assert "Session ended" in page.content()
    page.click("#sso-logout")
    if page.url.startswith(provider.issuer):  # the provider asks to confirm the sign-out
        page.click("button[autofocus], button[type=submit]")
    page.wait_for_url(re.compile(re.escape(provider.issuer) + r"/interaction/"))
    assert page.locator("input[name=password]").count() == 1  # signed out: the provider asks again
    context.close()


def test_account_that_is_no_person_is_refused(oidc_site: OIDCSite, chromium: Any) -> None:
    page = chromium.new_page()
    page.goto(f"{oidc_site.base}/openxpki/")
    sign_in_at_provider(page, oidc_site.provider, "mallory", ACCOUNTS["mallory"]["password"])
    page.wait_for_url(re.compile(re.escape(oidc_site.base)))
    assert "does not match exactly one person" in page.content()
