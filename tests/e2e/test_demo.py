"""`make demo` (contrib/demo/run_demo.py) keeps working: it is the README's main-job command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID
from sqlalchemy import select
from support.browser import screenshot

from openxpki_py.db.engine import open_engine
from openxpki_py.db.schema import audit_log, ca_certificate, certificate

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@dataclass
class DemoRun:
    base: Path  # the demo's folder
    out: str  # what it printed
    site: str  # http://127.0.0.1:<port>, still serving


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoRun]:
    """`make demo` once for this module's tests; its Apache keeps serving until they are done."""
    folder = Path(tempfile.mkdtemp(prefix="openxpki-demo-test-"))
    folder.chmod(0o755)  # Apache (www-data) must reach the instance below it
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "contrib" / "demo" / "run_demo.py"), "--dir", str(folder / "demo"),
             "--venv", str(Path(sys.executable).parent.parent), "--port", "0"],
            capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        site = re.search(r"Operators' console: open (http://127\.0\.0\.1:\d+)/openxpki/console", result.stdout)
        assert site, result.stdout[-3000:]
        yield DemoRun(folder / "demo", result.stdout + result.stderr, site.group(1))
    finally:
        apachectl = folder / "demo" / "httpd" / "apachectl"
        if apachectl.exists():
            subprocess.run([str(apachectl), "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_personalizes_alices_card(demo: DemoRun) -> None:
    out = demo.out
    assert "done: 2 certificates on the card" in out
    assert 'browser: "Your card is ready."' in out
    # The logon key was made on the card (never extractable); the escrowed encryption key was
    # imported (sensitive, not extractable, but made outside the card: not "never extractable").
    assert out.count("Certificate Object") == 2 and out.count("never extractable") == 1
    assert "smartcard_logon" in out and "encryption" in out
    assert "key-recovery key created" in out
    assert "escrowed key 2/2 (encryption) imported onto the card" in out
    assert re.search(r"^\s+\d+\s+encryption\s+rsa-2048\s+installed", out, re.M), out[-3000:]
    _every_url_in_the_certificates_answers(demo.base)


def test_demo_tells_how_to_log_in_as_an_operator(demo: DemoRun) -> None:
    assert "user bob, password bob: pick the role RA Operator (member of cn=ra-operators)" in demo.out
    assert "user carol, password carol: pick the role CA Operator (member of cn=ca-operators)" in demo.out
    roles = yaml.safe_load((demo.base / "config.yaml").read_text())["auth"]["roles"]
    assert list(roles) == ["User", "RA Operator", "CA Operator"]
    assert roles["RA Operator"]["command"] == [str(REPO / "contrib" / "auth" / "check-ldif-group"),
                                               str(demo.base / "directory.ldif"),
                                               "cn=ra-operators,ou=groups,dc=example,dc=com"]


def _signed_in(chromium: Any, login: str, site: str, role: str, path: str = "/openxpki/login") -> Any:
    """A browser that logged in as the demo prints it (password = login) and picked ``role``."""
    context = chromium.new_context(http_credentials={"username": login, "password": login},
                                   viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(site + path)
    page.get_by_role("button", name=role).click()
    page.wait_for_load_state()
    return page


def _card_certificate_statuses(page: Any) -> list[str]:
    return [text.strip() for text in page.locator("#card-certificates td.status").all_inner_texts()]


def test_operator_suspends_and_resumes_alices_card_in_the_demo(demo: DemoRun, chromium: Any) -> None:
    """The demo's operator login, as printed: bob picks RA Operator and pauses alice's new card."""
    refused = _signed_in(chromium, "alice", demo.site, "RA Operator")
    assert refused.locator("text=not granted").count() > 0
    refused.context.close()

    page = _signed_in(chromium, "bob", demo.site, "RA Operator", "/openxpki/console/search")
    assert page.url.startswith(f"{demo.site}/openxpki/console/search")
    page.select_option("#kind", "person")
    page.fill("#q", "Alice")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="alice").click()
    assert page.get_by_role("heading", name="Alice Example").is_visible()
    cards = page.locator("#person-cards a")
    assert cards.count() == 1
    serial = cards.first.inner_text()
    cards.first.click()
    assert page.locator(".card-status").inner_text() == "active"
    assert _card_certificate_statuses(page) == ["valid", "valid"]

    form = page.locator("#transition-suspend")
    form.locator("input[name=confirm]").check()
    form.locator("input[name=comment]").fill("alice is on leave")
    form.get_by_role("button").click()
    assert page.locator(".card-status").inner_text() == "suspended"
    assert _card_certificate_statuses(page) == ["revoked (certificateHold)"] * 2
    screenshot(page, "demo-operator-card-suspended.png")

    form = page.locator("#transition-resume")
    form.locator("input[name=confirm]").check()
    form.get_by_role("button").click()
    assert page.locator(".card-status").inner_text() == "active"
    assert _card_certificate_statuses(page) == ["valid", "valid"]

    page.get_by_role("navigation", name="Main menu").get_by_role("link", name="Audit log").click()
    page.click("#verify-chain")
    assert "Audit chain intact" in page.locator("#audit-message").inner_text()
    screenshot(page, "demo-operator-audit-verified.png")
    page.context.close()

    rows = _audit(demo.base)
    assert [(r["actor"], r["role_name"], r["target"], r["details"]["transition"]) for r in rows
            if r["event"] == "token.transition"] == [("bob", "RA Operator", serial, "suspend"),
                                                     ("bob", "RA Operator", serial, "resume")]
    refusal = next(r for r in rows if r["event"] == "auth.role.refused")
    assert (refusal["actor"], refusal["role_name"]) == ("alice", "RA Operator")
    assert "alice is not a member of cn=ra-operators" in str(refusal["details"])


def _audit(base: Path) -> list[Any]:
    engine = open_engine(f"sqlite:///{base / 'db' / 'openxpki.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings())
    finally:
        engine.dispose()


def test_demo_on_a_virtual_card(pcscd: Any, card: str) -> None:
    """`make demo CARD=piv|openpgp`: the same main job with a software card behind pcscd + vpcd.

    The test's pcscd (which holds the machine-wide lock) is the demo's: ``--pcscd-running``.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"openxpki-demo-{card}-test-"))
    folder.chmod(0o755)
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "contrib" / "demo" / "run_demo.py"), "--dir", str(folder / "demo"),
             "--venv", str(Path(sys.executable).parent.parent), "--port", "0", "--card", card, "--pcscd-running"],
            capture_output=True, text=True, timeout=300, check=False)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-6000:]
        # Both certificates; the escrowed encryption key imported into the card's decryption slot (PIV 9d,
        # OpenPGP 02: that one used to be left out, as its key cannot sign a CSR).
        assert "done: 2 certificates on the card" in out and 'browser: "Your card is ready."' in out, out[-6000:]
        assert "escrowed key 2/2 (encryption) imported onto the card" in out
        assert "Not on this card" not in out
        assert out.count("Certificate Object") == 2
        assert "The virtual card is removed again" in out
    finally:
        apachectl = folder / "demo" / "httpd" / "apachectl"
        if apachectl.exists():
            subprocess.run([str(apachectl), "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["piv", "openpgp"])
def card(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _fetch(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:"), url  # plain http, on the demo's own port
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - a URL from our own certificate
        assert answer.status == 200, url
        return bytes(answer.read())


def _every_url_in_the_certificates_answers(base: Path) -> None:
    """The CRL distribution point and CA issuer URL of each issued certificate answer with the right object."""
    engine = open_engine(f"sqlite:///{base / 'db' / 'openxpki.db'}")
    try:
        with engine.connect() as conn:
            issued = [x509.load_der_x509_certificate(bytes(r.der)) for r in conn.execute(
                select(certificate.c.der).where(certificate.c.owner == "alice"))]
            (ca_der,) = [bytes(r.der) for r in conn.execute(select(ca_certificate.c.der))]
    finally:
        engine.dispose()
    ca = x509.load_der_x509_certificate(ca_der)
    assert len(issued) == 2
    for cert in issued:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        crl_urls = [name.value for point in cdp for name in point.full_name or []]
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        ca_urls = [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS]
        assert crl_urls and ca_urls
        for url in crl_urls:
            crl = x509.load_der_x509_crl(_fetch(url))
            assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        for url in ca_urls:
            assert _fetch(url) == ca_der
