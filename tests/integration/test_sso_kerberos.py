"""SSO with Kerberos/SPNEGO: an MIT KDC, mod_auth_gssapi in Apache, curl --negotiate.

The shipped block ``apache/sso-kerberos.conf`` is included as a site would
include it.  With ``GssapiLocalName Off`` Apache hands over
``alice@EXAMPLE.COM`` and ``auth.sso.realms`` maps it to alice (a principal
of another realm is refused); with ``On`` krb5's own mapping does it.  Either
way the pages need a ticket and the agent's API, /crl/ and OCSP do not.
Chromium, allowed to negotiate with the site (``--auth-server-allowlist``),
signs in with the ticket from ``kinit`` and chooses a role.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from support.browser import CHROMIUM, CHROMIUM_ARGS, screenshot
from support.agent import printed_phrase, run_agent
from support.kdc import REALM

from openxpki_py.db.schema import certificate, web_session

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CURL = shutil.which("curl") or "/usr/bin/curl"

pytestmark = pytest.mark.slow


def _curl(kdc: Any, url: str, *args: str) -> tuple[int, str, str]:
    """(status, Location, body) of one request; --negotiate uses the ticket in kdc's ccache, if any."""
    done = subprocess.run([CURL, "-s", "-o", "-", "-w", "\\n%{http_code} %{redirect_url}", "--negotiate", "-u", ":",
                           *args, url], env=kdc.env, capture_output=True, text=True, timeout=60, check=False)
    body, _, tail = done.stdout.rpartition("\n")
    status, _, location = tail.partition(" ")
    return int(status), location, body


@pytest.fixture
def kerberos_site(apache_site_factory: Callable[..., Any], mit_kdc: Callable[..., Any],
                  make_token: Callable[..., Any]) -> Callable[..., Any]:
    def start(local_name: str, roles: dict[str, Any] | None = None, personalization: bool = False,
              issuing: bool = False) -> tuple[Any, Any]:
        """``issuing``: a CA key in a SoftHSM token, made by ``ca init`` as Apache's user."""
        kdc = mit_kdc()
        kdc.kadmin(f"cpw -pw alice-password alice@{REALM}")  # the realm has alice, keyless (PKINIT)
        kdc.kadmin(f"addprinc -pw mallory-password mallory@{REALM}")
        keytab = kdc.add_service_keytab("HTTP/localhost", kdc.folder / "http.keytab")
        shutil.chown(keytab, group="www-data")
        keytab.chmod(0o640)
        include = "\n".join([f'Define OPENXPKI_PY_KEYTAB "{keytab}"',
                             f"Define OPENXPKI_PY_GSSAPI_LOCALNAME {local_name}",
                             f'Include "{REPO / "apache" / "sso-kerberos.conf"}"'])
        sso = {"realms": [REALM]} if local_name == "Off" else {}
        auth: dict[str, Any] = {"sso": sso, **({"roles": roles} if roles else {})}
        ca_token = make_token("krb-ca", owner="www-data") if issuing else None

        def edit(root: Path, cfg: dict[str, Any]) -> None:
            if personalization:  # /token starts the real smartcard personalization
                cfg["web"]["deep_link"] = {"workflow": "smartcard_personalization", "role": "User"}
                cfg["workflow"] = {}
            if ca_token is not None:
                cfg["ca"] = ca_token.ca_settings(root, "CN=Kerberos Test CA,O=Example Corp,C=DE")
        site = apache_site_factory(basic_auth=False, extra_include=include,
                                   envvars={"KRB5_CONFIG": str(kdc.folder / "krb5.conf")},
                                   config={"auth": auth}, edit_config=edit)
        if issuing:
            init = subprocess.run([str(BIN / "openxpki-py"), "--config", str(site.config_path), "ca", "init"],
                                  capture_output=True, text=True, timeout=120, user="www-data", check=False)
            assert init.returncode == 0, init.stderr
        return site, kdc
    return start


@pytest.mark.parametrize("local_name", ["Off", "On"])
def test_spnego_login_maps_the_principal_and_leaves_the_api_outside(kerberos_site: Callable[..., Any],
                                                                   local_name: str) -> None:
    site, kdc = kerberos_site(local_name)
    base = site.base_url.replace("127.0.0.1", "localhost")  # the service principal is HTTP/localhost
    # No ticket: the pages answer 401 with a Negotiate challenge; API, OCSP and CRL are not behind SSO.
    assert _curl(kdc, f"{base}/token")[0] == 401
    api = _curl(kdc, f"{base}/openxpki/api/v1/enroll", "-X", "POST", "-H", "Content-Type: application/json",
                "--data", '{"code": "AAAAA-BBBBB-CCCCC-DDDDD-E"}')
    assert api[0] != 401 or '"error"' in api[2]  # the application's own JSON answer, not Apache's challenge
    assert '"error"' in api[2]

    kdc.kinit_password(f"alice@{REALM}", "alice-password")
    status, location, _ = _curl(kdc, f"{base}/token")
    assert status == 303 and re.search(r"/openxpki/deeplink/workflow/\d+$", location), (status, location)
    logins = site.read_db(lambda c: [row.login for row in c.execute(select(web_session))])
    assert logins == ["alice"]  # the person, not alice@EXAMPLE.COM


def test_principal_that_is_no_person_is_refused(kerberos_site: Callable[..., Any]) -> None:
    site, kdc = kerberos_site("Off")
    base = site.base_url.replace("127.0.0.1", "localhost")
    kdc.kinit_password(f"mallory@{REALM}", "mallory-password")  # a realm user the directory does not know
    status, _, body = _curl(kdc, f"{base}/openxpki/login")
    assert status == 403 and "does not match exactly one person" in body


@pytest.fixture
def negotiating_chromium(tmp_path: Path) -> Iterator[Callable[[Any], Any]]:
    """Chromium that sends the ticket in kdc's ccache to http://localhost (AuthServerAllowlist).

    A persistent (regular) profile: Chromium never authenticates ambiently
    (Kerberos) from incognito or guest profiles, which Playwright's plain
    contexts are.  On Linux Chromium loads GSSAPI only once its profile has
    seen a Negotiate challenge (the local-state flag below; the first
    challenge sets it, fails, and restarts the network service): the profile
    starts as one that has, as a user's browser is after its first visit.
    """
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        contexts: list[Any] = []

        def launch(kdc: Any) -> Any:
            env = {key: kdc.env[key] for key in ("KRB5_CONFIG", "KRB5CCNAME", "PATH", "HOME") if key in kdc.env}
            args = [*CHROMIUM_ARGS, "--auth-server-allowlist=localhost"]
            profile = tmp_path / f"profile{len(contexts)}"
            profile.mkdir()
            (profile / "Local State").write_text(json.dumps({"net": {"received_http_auth_negotiate_headers": True}}))
            context = pw.chromium.launch_persistent_context(str(profile),
                                                            executable_path=str(CHROMIUM), args=args,
                                                            headless=True, env=env)
            contexts.append(context)
            return context
        try:
            yield launch
        finally:
            for context in contexts:
                context.close()


@pytest.mark.parametrize("local_name", ["Off", "On"])
def test_chromium_signs_in_with_its_ticket(kerberos_site: Callable[..., Any],
                                           negotiating_chromium: Callable[[Any], Any], local_name: str) -> None:
    roles = {"User": {"command": ["/bin/true"]}, "RA Operator": {"command": ["/bin/true"], "users": ["alice"]}}
    site, kdc = kerberos_site(local_name, roles=roles, personalization=True)
    base = site.base_url.replace("127.0.0.1", "localhost")
    kdc.kinit_password(f"alice@{REALM}", "alice-password")
    page = negotiating_chromium(kdc).new_page()
    response = page.goto(f"{base}/token")
    assert response is not None and response.status == 200
    assert re.search(r"/openxpki/deeplink/workflow/\d+$", page.url), page.url
    assert "(alice)" in page.content() or ">alice<" in page.content()
    page.click("#get-code")  # the personalization hands out its enrollment code, polling under SPNEGO
    page.wait_for_load_state()
    page.click("#code-details summary")
    assert re.fullmatch(r"[A-Z2-7]{5}(-[A-Z2-7]{1,5}){4}", page.locator("#enrollment-code").inner_text())
    screenshot(page, f"sso-kerberos-chromium-{local_name}.png")
    # The role choice, under the same SPNEGO session.
    page.goto(f"{base}/openxpki/login")
    assert page.locator("button[name=role]").all_text_contents() == ["User", "RA Operator"]
    page.click("button[name=role][value='RA Operator']")
    page.wait_for_load_state()
    grant = site.audit()[-1]
    assert (grant["event"], grant["actor"], grant["role_name"]) == ("auth.role.grant", "alice", "RA Operator")
    logins = site.read_db(lambda c: sorted({row.login for row in c.execute(select(web_session))}))
    assert logins == ["alice"]


def test_chromium_personalizes_a_card_under_spnego(kerberos_site: Callable[..., Any],
                                                   negotiating_chromium: Callable[[Any], Any],
                                                   make_token: Callable[..., Any], tmp_path: Path) -> None:
    """The whole mission behind Kerberos: alice@EXAMPLE.COM's browser, the page's own polling, the agent."""
    site, kdc = kerberos_site("Off", personalization=True, issuing=True)
    base = site.base_url.replace("127.0.0.1", "localhost")
    kdc.kinit_password(f"alice@{REALM}", "alice-password")
    page = negotiating_chromium(kdc).new_page()
    page.goto(f"{base}/token")
    page.click("#get-code")
    page.wait_for_load_state()
    page.click("#code-details summary")
    code = page.locator("#enrollment-code").inner_text()
    card = make_token("krb-card")
    # The agent's API is outside SSO: it needs no ticket, only the code.
    agent = run_agent(card, f"{site.base_url}/openxpki", code, tmp_path / "state", timeout=180)
    try:
        phrase = printed_phrase(agent)
        page.wait_for_selector("#confirm-card", timeout=60_000)  # the live page, polling under SPNEGO
        assert page.locator("#pairing-phrase").inner_text() == phrase
        page.click("#confirm-card")
        out, err = agent.communicate(timeout=180)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    page.wait_for_selector("text=Your card is ready.", timeout=60_000)
    issued = site.read_db(lambda c: sorted((row.owner, row.profile) for row in c.execute(
        select(certificate).where(certificate.c.owner != "ocsp-responder"))))
    assert [owner for owner, _ in issued] == ["alice", "alice"], issued  # the person, not the principal
    assert len({profile for _, profile in issued}) == 2


def test_chromium_without_a_ticket_gets_no_page(kerberos_site: Callable[..., Any],
                                                negotiating_chromium: Callable[[Any], Any]) -> None:
    site, kdc = kerberos_site("Off")
    page = negotiating_chromium(kdc).new_page()
    try:
        response = page.goto(site.base_url.replace("127.0.0.1", "localhost") + "/token")
    except Exception as exc:  # Chromium gives up on the Negotiate challenge it cannot answer
        assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
    else:
        assert response is not None and response.status == 401
    assert site.read_db(lambda c: list(c.execute(select(web_session)))) == []
