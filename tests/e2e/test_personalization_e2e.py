"""The mission, end to end, with every real part: Apache (mod_wsgi-express,
Basic auth as the SSO, the /token rewrite), slapd, PostgreSQL or SQLite, a
SoftHSM2 token holding the CA key, a separate SoftHSM2 "card" (its own
SoftHSM configuration, as on the user's PC), the token agent as a separate
process, and headless Chromium following the live page."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select
from support.agent import printed_phrase
from support.browser import screenshot
from support.deeplink import confirm_when_asked, start_for
from support.pkix import assert_cert_lints_clean, assert_chain_lints_clean, assert_openssl_verifies

from openxpki_py.configreader import Reader
from openxpki_py.db.engine import open_engine
from openxpki_py.db.schema import ca_certificate, certificate, token, workflow, workflow_history
from openxpki_py.directory import open_directory
from openxpki_py.directory.config import parse_directory_config

pytestmark = pytest.mark.slow

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
BIN = Path(sys.executable).parent
OID_UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


@dataclass
class Card:
    """A SoftHSM2 token in a SoftHSM of its own: the user's PC, not the server."""

    folder: Path
    label: str
    pin: str = "123456"

    @property
    def env(self) -> dict[str, str]:
        import os

        return {**os.environ, "SOFTHSM2_CONF": str(self.folder / "softhsm2.conf")}

    @property
    def pin_file(self) -> Path:
        path = self.folder / "pin"
        path.write_text(self.pin)
        path.chmod(0o600)
        return path

    def pkcs11_tool(self, *args: str) -> str:
        result = subprocess.run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", self.label, *args],
                                env=self.env, capture_output=True, text=True, check=True, timeout=60)
        return result.stdout

    def agent(self, server: str, code: str, state_dir: Path) -> list[str]:
        return [str(BIN / "openxpki-py-token"), "enroll", "--server", server, "--code", code,
                "--insecure-http-for-localhost", "--module", SOFTHSM_MODULE, "--token-label", self.label,
                "--pin-file", str(self.pin_file), "--card-profile", "generic", "--state-dir", str(state_dir),
                "--timeout", "120"]


@pytest.fixture
def make_card() -> Iterator[Callable[[str], Card]]:
    folders: list[Path] = []

    def make(label: str) -> Card:
        folder = Path(tempfile.mkdtemp(prefix="openxpki-card-"))
        folders.append(folder)
        (folder / "tokens").mkdir()
        (folder / "softhsm2.conf").write_text(
            f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
        card = Card(folder, label)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "12345678",
                        "--pin", card.pin], env=card.env, capture_output=True, check=True, timeout=60)
        return card

    yield make
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _users_certificates() -> Any:
    """Certificates issued to people (``ca init`` also certifies the OCSP responder's key)."""
    return select(certificate).where(certificate.c.owner != "ocsp-responder")


@dataclass
class PkiSite:
    site: Any
    db_url: str
    ca_pem: x509.Certificate
    slapd: Any

    def query(self, statement: Any) -> list[Any]:
        engine = open_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(statement).mappings())
        finally:
            engine.dispose()
            if self.db_url.startswith("sqlite"):
                self.site.read_db(lambda conn: None)  # hands the SQLite files back to www-data


@pytest.fixture(params=["postgresql", "sqlite"])
def pki_site(request: pytest.FixtureRequest, apache_site_factory: Callable[..., Any],
             make_token: Callable[..., Any], slapd: Any) -> PkiSite:
    ca_token = make_token("e2e-ca", owner="www-data")
    pg_url = None
    if request.param == "postgresql":
        pg_url = request.getfixturevalue("pg_engine").url.render_as_string(hide_password=False)

    def edit(root: Path, cfg: dict[str, Any]) -> None:
        password = root / "ldap.password"
        shutil.copy(slapd.bind_password_file, password)  # Apache's www-data must read it
        directory = slapd.directory_settings("ldap")
        directory["ldap"]["bind_password_file"] = str(password)
        cfg["directory"] = directory
        cfg["ca"] = ca_token.ca_settings(root, "CN=E2E Smartcard CA,O=Example Corp,C=DE")
        cfg["web"]["deep_link"] = {"workflow": "smartcard_personalization", "role": "User"}
        cfg["workflow"] = {}
        if pg_url is not None:
            cfg["database"]["url"] = pg_url

    site = apache_site_factory(edit_config=edit, processes=2, threads=4)
    db_url = pg_url or f"sqlite:///{site.db_path}"
    # The CA key is made in the token by the operator's command, as Apache's user.
    init = subprocess.run([str(BIN / "openxpki-py"), "--config", str(site.config_path), "ca", "init"],
                          capture_output=True, text=True, timeout=120, user="www-data", check=False)
    assert init.returncode == 0, init.stderr
    return PkiSite(site, db_url, x509.load_pem_x509_certificate(init.stdout.encode()), slapd)


def test_alice_personalizes_her_card_in_the_browser(pki_site: PkiSite, chromium: Any,
                                                   make_card: Callable[[str], Card], tmp_path: Path) -> None:
    site = pki_site.site
    card = make_card("alice-card")
    context = chromium.new_context(http_credentials={"username": "alice", "password": "secret"},
                                   viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(f"{site.base_url}/token")
    assert "/openxpki/deeplink/workflow/" in page.url
    assert page.locator("nav.menu").count() == 0  # deep link: no menu
    page.click("#get-code")
    page.wait_for_load_state()
    if page.locator("#enrollment-code").count() == 0:
        raise AssertionError(page.content())
    # Not on the screen until asked for (a screenshot or a shared screen leaks no code).
    assert not page.locator("#enrollment-code").is_visible()
    assert page.locator("#agent-link").get_attribute("href").startswith("openxpki-py-token:enroll?server=")
    page.click("#code-details summary")
    code = page.locator("#enrollment-code").inner_text()
    command = page.locator("#agent-command").inner_text()
    assert re.fullmatch(r"[A-Z2-7]{5}(-[A-Z2-7]{1,5}){4}", code)
    assert f"--server {site.base_url}/openxpki --code {code}" in command

    agent = subprocess.Popen(card.agent(f"{site.base_url}/openxpki", code, tmp_path / "state"), env=card.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            phrase = printed_phrase(agent)
            page.wait_for_selector("#confirm-card", timeout=60_000)  # the live page reloads by itself
        except Exception:
            agent.kill()
            raise AssertionError(f"no confirmation asked; agent said: {agent.communicate()[1]}") from None
        assert page.locator("#pairing-phrase").inner_text() == phrase  # what alice compares
        assert page.locator("#card-model").inner_text() == "SoftHSM v2"
        card_serial = page.locator("#card-serial").inner_text()
        screenshot(page, "personalization-confirm-card.png")
        page.click("#confirm-card")
        assert agent.stdout is not None and agent.stderr is not None
        with agent:  # the rest after the phrase (communicate() would skip what is buffered); closes the pipes
            err = agent.stderr.read()
            out = agent.stdout.read()
            agent.wait(timeout=180)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    assert "done: 2 certificates on the card" in err
    page.wait_for_selector("#certificates", timeout=30_000)
    assert "Your card is ready." in page.locator("#status-message").inner_text()
    shot = screenshot(page, "personalization-done.png")
    assert shot.stat().st_size > 1000
    context.close()

    # The card: two private keys that never left it, two certificates next to them.
    objects = card.pkcs11_tool("--login", "--pin", card.pin, "--list-objects")
    keys = re.findall(r"Private Key Object.*?ID:\s+(\w+).*?Access:\s+([^\n]+)", objects, re.S)
    certs = re.findall(r"Certificate Object.*?ID:\s+(\w+)", objects, re.S)
    assert len(keys) == 2 and all("never extractable" in access for _, access in keys), objects
    assert sorted(k for k, _ in keys) == sorted(certs) == ["01", "02"], objects

    # The certificates: lint clean, chain to the CA, subject data from alice's LDAP entry.
    rows = pki_site.query(_users_certificates().order_by(certificate.c.id))
    assert len(rows) == 2 and {r["profile"] for r in rows} == {"smartcard_logon", "encryption"}
    cfg = pki_site.slapd.directory_settings("ldap")
    directory = open_directory(parse_directory_config(Reader(cfg, "directory")))
    alice = directory.find_user("alice").attributes
    directory.close()
    for row in rows:
        cert = x509.load_der_x509_certificate(row["der"])
        assert_cert_lints_clean(cert, tmp_path)
        assert_chain_lints_clean(pki_site.ca_pem, cert, tmp_path)
        assert_openssl_verifies(pki_site.ca_pem, cert, tmp_path)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == alice["cn"]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.RFC822Name) == [alice["mail"]]
        if row["profile"] == "smartcard_logon":
            upn = san.get_values_for_type(x509.OtherName)[0]
            assert upn.type_id == OID_UPN and upn.value[2:].decode() == alice["upn"]
        assert row["owner"] == "alice" and row["token_id"] is not None
    on_card = {x509.load_der_x509_certificate(r["der"]).serial_number for r in rows}
    assert {int(s, 16) for s in re.findall(r"serial:\s+([0-9A-F]+)", objects)} == on_card

    # The workflow history shows the forked issuance children.
    parent = pki_site.query(select(workflow).where(workflow.c.wf_type == "smartcard_personalization"))[0]
    children = pki_site.query(select(workflow).where(workflow.c.parent_id == parent["id"]))
    assert parent["state"] == "SUCCESS" and len(children) == 2
    assert {c["wf_type"] for c in children} == {"certificate_issuance"}
    actions = [h["action"] for h in pki_site.query(
        select(workflow_history).where(workflow_history.c.workflow_id == parent["id"])
        .order_by(workflow_history.c.id))]
    assert actions.count("submit_csr") == 2 and actions.count("confirm_install") == 2
    tokens = pki_site.query(select(token))
    assert [t["serial"] for t in tokens] == [card_serial] and tokens[0]["owner"] == "alice"

    # Refusals through the real agent: the used code, and alice's card for bob.
    again = subprocess.run(card.agent(f"{site.base_url}/openxpki", code, tmp_path / "fresh-state"),
                           env=card.env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 4 and "[enroll.code_used]" in again.stderr
    assert len(pki_site.query(_users_certificates())) == 2


@pytest.mark.parametrize("pki_site", ["sqlite"], indirect=True)
def test_interrupted_agent_continues_and_nothing_is_issued_twice(
        pki_site: PkiSite, make_card: Callable[[str], Card], tmp_path: Path) -> None:
    site = pki_site.site
    card = make_card("alice-card-2")
    browser, path, code = start_for(site, "alice")
    argv = card.agent(f"{site.base_url}/openxpki", code, tmp_path / "state")
    seen = []
    with subprocess.Popen(argv, env=card.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True) as agent:
        confirm_when_asked(browser, path, agent)
        assert agent.stderr is not None
        for line in agent.stderr:
            seen.append(line)
            if line.startswith("generating key 2/2"):
                agent.kill()  # after the first certificate is on the card, while the second key is being made
                break
        agent.wait(timeout=30)
    assert any(line.startswith("writing certificate 1/2") for line in seen), seen
    assert len(pki_site.query(_users_certificates())) == 1

    rerun = subprocess.run(argv, env=card.env, capture_output=True, text=True, timeout=180, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "done: 2 certificates on the card" in rerun.stderr
    rows = pki_site.query(_users_certificates())
    assert len(rows) == 2 and {r["profile"] for r in rows} == {"smartcard_logon", "encryption"}
    objects = card.pkcs11_tool("--login", "--pin", card.pin, "--list-objects")
    assert objects.count("Private Key Object") == 2 and objects.count("Certificate Object") == 2, objects

    # bob's agent with bob's code on alice's card: refused, nothing issued
    _, bob_path, bob_code = start_for(site, "bob")
    bob = subprocess.run(card.agent(f"{site.base_url}/openxpki", bob_code, tmp_path / "bob-state"),
                         env=card.env, capture_output=True, text=True, timeout=120, check=False)
    assert bob.returncode == 4 and "[token.owned_by_other]" in bob.stderr, bob.stderr
    assert len(pki_site.query(_users_certificates())) == 2
    assert pki_site.query(select(ca_certificate))[0]["status"] == "active"


def test_concurrent_token_requests_make_one_personalization(pki_site: PkiSite) -> None:
    # The attack/fault run: 50 /token requests at once on PostgreSQL started 2-20
    # personalizations (search-then-start without a lock). Each request is a new
    # browser (no session), as many tabs or reloads after a crash would be.
    site = pki_site.site
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda _: site.browser("alice").get("/token"), range(48)))
    assert all(a.status == 303 for a in answers), {a.status for a in answers}
    locations = {a.headers["Location"].removeprefix(site.base_url) for a in answers}
    assert len(locations) == 1, locations
    started = pki_site.query(select(workflow.c.id).where(workflow.c.wf_type == "smartcard_personalization"))
    assert len(started) == 1
    # Another person still gets their own.
    bob = site.browser("bob").get("/token")
    assert bob.status == 303 and bob.headers["Location"].removeprefix(site.base_url) not in locations
