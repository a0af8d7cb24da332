"""The operators' console in Chromium through Apache (mod_wsgi-express, Basic auth as the SSO).

bob is offered RA Operator and CA Operator (a group-check handler that
grants bob only); alice is a User.  Each page's main action is done as an
operator would, then checked where it takes effect: OpenSSL's OCSP client
against the site's responder, ``openssl crl`` on the CRL the button issued,
and the audit trail.  Screenshots go to ``test-artifacts/`` (docs/operators.md
shows them).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from support.browser import screenshot

from openxpki_py.db.schema import certificate, crl, token, workflow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GRANT_BOB = REPO / "tests" / "data" / "auth" / "grant-bob"
RA, CA = "RA Operator", "CA Operator"

pytestmark = pytest.mark.slow


def _site_config(root: Path) -> dict[str, Any]:
    (root / "ca-key.password").write_text("ca key password for the test\n")
    return {
        "ca": {"crl": {"publish_dir": str(root / "crl")}},
        "auth": {"roles": {"User": {"command": ["/bin/true"]}, RA: {"command": [str(GRANT_BOB)]},
                           CA: {"command": [str(GRANT_BOB)]}}},
    }


def _cli(site: Any, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "openxpki-py"), "--config", str(site.config_path), *args],
                          capture_output=True, text=True, timeout=120, user="www-data", check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def console_site(apache_site_factory: Callable[..., Any]) -> Any:
    site = apache_site_factory(config=_site_config)
    init = _cli(site, "ca", "init")
    work = Path(tempfile.mkdtemp(prefix="console-", dir=site.root))
    work.chmod(0o777)
    (work / "ca.pem").write_text(init.stdout)
    site.work = work
    return site


def _issue(site: Any, name: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    (site.work / f"{name}.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    _cli(site, "ca", "issue", "--profile", "smartcard_logon", "--csr", str(site.work / f"{name}.csr"),
         "--user", "alice", "--out", str(site.work / f"{name}.pem"))
    return format(x509.load_pem_x509_certificate((site.work / f"{name}.pem").read_bytes()).serial_number, "x")


def _ocsp(site: Any, name: str) -> str:
    done = subprocess.run(["openssl", "ocsp", "-issuer", str(site.work / "ca.pem"), "-CAfile",
                           str(site.work / "ca.pem"), "-url", f"{site.base_url}/openxpki/ocsp",
                           "-cert", str(site.work / f"{name}.pem")],
                          capture_output=True, text=True, timeout=60, check=False)
    out = done.stdout + done.stderr
    assert "Response verify OK" in out, out
    return out


def _openssl_crl(path: Path) -> str:
    return subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(path), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout


def _as(chromium: Any, user: str) -> Any:
    context = chromium.new_context(http_credentials={"username": user, "password": "secret"},
                                   viewport={"width": 1100, "height": 900})
    return context.new_page()


def _pick_role(page: Any, role: str) -> None:
    page.get_by_role("button", name=role).click()
    page.wait_for_load_state()


def test_operator_revokes_holds_releases_and_issues_a_crl(console_site: Any, chromium: Any) -> None:
    site = console_site
    stolen, held = _issue(site, "stolen"), _issue(site, "held")
    page = _as(chromium, "bob")
    page.goto(f"{site.base_url}/openxpki/console/search")
    _pick_role(page, RA)
    assert page.url.startswith(f"{site.base_url}/openxpki/console/search")

    # Find alice by name, open her certificate from her page.
    page.select_option("#kind", "person")
    page.fill("#q", "Alice")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="alice").click()
    assert page.get_by_role("heading", name="Alice Example").is_visible()
    screenshot(page, "console-person.png")
    page.get_by_role("link", name=stolen).click()

    # Revoke: reason, comment, a confirmation page, then the certificate page says so.
    page.select_option("#reason", "keyCompromise")
    page.fill("#comment", "card stolen from the car")
    page.get_by_role("button", name="Revoke…").click()
    assert page.locator("#confirm-reason").inner_text() == "keyCompromise"
    screenshot(page, "console-revoke-confirm.png")
    page.click("#confirm-revoke")
    assert "revoked (keyCompromise)" in page.locator("#console-message").inner_text()
    assert page.locator(".cert-status").inner_text().startswith("revoked (keyCompromise)")
    answer = _ocsp(site, "stolen")
    assert ": revoked" in answer and "keyCompromise" in answer, answer

    # Hold the second one (certificateHold), then release it: OCSP follows each step.
    page.goto(f"{site.base_url}/openxpki/console/search?kind=certificate&q={held.upper()}")
    page.select_option("#reason", "certificateHold")
    page.get_by_role("button", name="Revoke…").click()
    page.click("#confirm-revoke")
    assert "put on hold" in page.locator("#console-message").inner_text()
    answer = _ocsp(site, "held")
    assert ": revoked" in answer and "certificateHold" in answer, answer
    screenshot(page, "console-certificate-on-hold.png")

    # The RA Operator may not issue a CRL: no button, and the POST is refused.
    page.get_by_role("navigation", name="Main menu").get_by_role("link", name="Revocation and CRL").click()
    assert page.locator("#issue-crl").count() == 0

    # The CA Operator issues one: openssl reads both entries with their reasons.
    page.get_by_role("link", name="Switch role").click()
    _pick_role(page, CA)
    page.goto(f"{site.base_url}/openxpki/console/crl")
    assert page.locator("#crl-none").is_visible()
    page.click("#issue-crl")
    assert "CRL number 1 issued with 2 entries and published" in page.locator("#console-message").inner_text()
    assert page.locator("#crl-entries").inner_text() == "2"
    screenshot(page, "console-crl.png")
    published = next((site.root / "crl").glob("*.crl"))
    text = _openssl_crl(published)
    assert re.search(rf"Serial Number: 0*{stolen.upper()}\s+Revocation Date: .*\s+CRL entry extensions:\s+"
                     r"X509v3 CRL Reason Code:\s+Key Compromise", text), text
    assert re.search(rf"Serial Number: 0*{held.upper()}\s+Revocation Date: .*\s+CRL entry extensions:\s+"
                     r"X509v3 CRL Reason Code:\s+Certificate Hold", text), text

    page.goto(f"{site.base_url}/openxpki/console/certificates/{held}")
    page.fill("#release-comment", "card found in the office")
    page.click("#release-hold")
    assert "valid again" in page.locator("#console-message").inner_text()
    assert ": good" in _ocsp(site, "held")
    page.goto(f"{site.base_url}/openxpki/console/crl")
    assert page.locator("#crl-changes").inner_text().startswith("1")
    page.click("#issue-crl")
    text = _openssl_crl(published)
    assert held.upper() not in text and stolen.upper() in text  # removeFromCRL: gone from the next CRL
    page.context.close()

    audit = [(r["actor"], r["role_name"], r["event"], r["outcome"], r["target"]) for r in site.audit()]
    assert ("bob", RA, "cert.revoke", "ok", stolen) in audit
    assert ("bob", RA, "cert.hold", "ok", held) in audit
    assert ("bob", CA, "cert.hold.release", "ok", held) in audit
    assert ("bob", CA, "crl.issue", "ok", "1") in audit
    comments = [r["details"].get("comment") for r in site.audit() if r["event"] == "cert.revoke"]
    assert comments == ["card stolen from the car"]


def test_refusals_user_role_and_csrf(console_site: Any, chromium: Any) -> None:
    site = console_site
    serial = _issue(site, "kept")
    page = _as(chromium, "alice")
    page.goto(f"{site.base_url}/openxpki/login")
    _pick_role(page, "User")
    for path in ("/console", "/console/crl", f"/console/certificates/{serial}", "/console/stuck",
                 "/console/search?q=bob"):
        response = page.goto(f"{site.base_url}/openxpki{path}")
        assert response is not None and response.status == 403, path
    assert page.get_by_role("navigation", name="Main menu").get_by_role("link", name="Search").count() == 0
    # Trying an operator role is refused by its handler, and audited.
    page.goto(f"{site.base_url}/openxpki/login")
    _pick_role(page, RA)
    assert page.get_by_role("heading", name="Role not granted").count() + page.locator("text=not granted").count() > 0
    page.context.close()
    assert ("alice", RA, "auth.role.refused") in [(r["actor"], r["role_name"], r["event"]) for r in site.audit()]

    # An operator's request without the session's CSRF token changes nothing.
    bob = site.browser("bob")
    login = bob.get("/openxpki/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.body).group(1)  # type: ignore[union-attr]
    assert bob.post("/openxpki/login", {"role": CA, "csrf_token": token}).status == 303
    refused = bob.post(f"/openxpki/console/certificates/{serial}/revoke",
                       {"reason": "keyCompromise", "confirm": "yes", "csrf_token": token})  # the pre-role token
    assert refused.status == 403
    assert bob.post("/openxpki/console/crl", {}).status == 403
    assert site.read_db(lambda conn: conn.execute(crl.select()).first()) is None
    assert ": good" in _ocsp(site, "kept")
    events = [(r["actor"], r["event"], r["outcome"]) for r in site.audit()]
    assert ("bob", "cert.revoke", "ok") not in events


def test_stuck_workflow_is_retried_from_the_queue(console_site: Any, chromium: Any) -> None:
    site = console_site
    now = datetime.now(timezone.utc)

    def insert(conn: Any) -> int:
        wf_id = conn.execute(workflow.insert(), {
            "wf_type": "crl_issuance", "state": "ISSUE", "proc_state": "exception", "creator": "system",
            "creator_role": "System", "retry_count": 10, "version": 1,
            "last_error": "TokenError: the HSM did not answer", "created_at": now, "updated_at": now,
        }).inserted_primary_key[0]
        conn.commit()
        return int(wf_id)

    wf_id = site.read_db(insert)
    page = _as(chromium, "bob")
    page.goto(f"{site.base_url}/openxpki/console/stuck")
    _pick_role(page, RA)
    assert "the HSM did not answer" in page.locator("#stuck-queue").inner_text()
    page.get_by_role("link", name=str(wf_id), exact=True).click()
    screenshot(page, "console-stuck-workflow.png")
    page.fill("#retry-comment", "HSM is back")
    page.click("#retry")
    assert page.locator("#wf-state").inner_text() == "PUBLISHED"
    assert page.locator("#wf-proc-state").inner_text() == "finished"
    assert "HSM is back" in page.locator("#workflow-history").inner_text()
    page.goto(f"{site.base_url}/openxpki/console/stuck")
    assert page.locator("#queue-empty").is_visible()
    page.context.close()
    assert ("bob", RA, "workflow.retry", "ok") in [(r["actor"], r["role_name"], r["event"], r["outcome"])
                                                   for r in site.audit()]


def test_audit_search_export_and_verify(console_site: Any, chromium: Any) -> None:
    site = console_site
    serial = _issue(site, "audited")
    page = _as(chromium, "bob")
    page.goto(f"{site.base_url}/openxpki/console/certificates/{serial}")
    _pick_role(page, CA)
    page.select_option("#reason", "superseded")
    page.get_by_role("button", name="Revoke…").click()
    page.click("#confirm-revoke")

    page.get_by_role("navigation", name="Main menu").get_by_role("link", name="Audit log").click()
    page.fill("#actor", "bob")
    page.fill("#event", "cert.*")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#audit-rows tbody tr")
    assert rows.count() == 1 and "cert.revoke" in rows.first.inner_text() and serial in rows.first.inner_text()
    screenshot(page, "console-audit-search.png")
    with page.expect_download() as download:
        page.click("#export-jsonl")
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 1 and '"event": "cert.revoke"' in lines[0] and '"entry_hash"' in lines[0]

    page.click("#verify-chain")
    assert "Audit chain intact" in page.locator("#audit-message").inner_text()
    page.context.close()
    events = [(r["actor"], r["event"], r["details"]) for r in site.audit()]
    assert any(e[:2] == ("bob", "audit.export") and e[2]["format"] == "jsonl" for e in events)


def test_card_suspended_resumed_and_reported_lost(console_site: Any, chromium: Any) -> None:
    site = console_site
    serial = _issue(site, "on-card")
    now = datetime.now(timezone.utc)

    def register(conn: Any) -> None:
        card_id = conn.execute(token.insert(), {"serial": "ALICE-CARD-1", "model": "Virtual PIV", "owner": "alice",
                                                "status": "active", "first_seen": now, "last_seen": now}
                               ).inserted_primary_key[0]
        conn.execute(certificate.update().where(certificate.c.serial == serial).values(token_id=card_id))
        conn.commit()

    site.read_db(register)
    page = _as(chromium, "bob")
    page.goto(f"{site.base_url}/openxpki/console/search")
    _pick_role(page, RA)
    page.select_option("#kind", "card")
    page.fill("#q", "ALICE-CARD-1")
    page.get_by_role("button", name="Search").click()
    assert page.locator(".card-status").inner_text() == "active"
    form = page.locator("#transition-suspend")
    form.locator("input[name=confirm]").check()
    form.locator("input[name=comment]").fill("on parental leave")
    form.get_by_role("button").click()
    assert page.locator(".card-status").inner_text() == "suspended"
    screenshot(page, "console-card-suspended.png")
    assert "certificateHold" in _ocsp(site, "on-card")
    form = page.locator("#transition-resume")
    form.locator("input[name=confirm]").check()
    form.get_by_role("button").click()
    assert page.locator(".card-status").inner_text() == "active"
    assert ": good" in _ocsp(site, "on-card")
    assert "token.transition" in page.locator("#card-history").inner_text()
    _forgotten_and_returned(site, page)
    page.get_by_role("navigation", name="Main menu").get_by_role("link", name="Audit log").click()
    page.click("#verify-chain")
    assert "Audit chain intact" in page.locator("#audit-message").inner_text()
    # The help desk's PIN unblock button: this site's CA key is no HSM key, so no card has a derived PUK
    # and the page says why (the unblock itself: tests/integration/test_agent_pin_unblock.py).
    page.goto(f"{site.base_url}/openxpki/console/cards/ALICE-CARD-1")
    page.locator("#start-unblock input[name=reason]").fill("ticket 4711: PIN blocked")
    screenshot(page, "console-card-unblock.png")
    page.locator("#start-unblock").get_by_role("button").click()
    assert "was refused: this server holds no per-card admin credentials" in page.locator(
        "#console-message").inner_text()
    assert page.locator("#card-workflows").count() == 0  # refused before it named the card
    page.context.close()

    mine = _as(chromium, "alice")
    mine.goto(f"{site.base_url}/openxpki/login")
    _pick_role(mine, "User")
    mine.goto(f"{site.base_url}/openxpki/certificates")
    mine.get_by_role("button", name="Unblock the PIN of card ALICE-CARD-1").click()
    assert "cannot be unblocked here" in mine.locator("#my-message").inner_text()

    # alice blocks her lost card herself.
    mine.goto(f"{site.base_url}/openxpki/certificates")
    mine.locator("#my-cards input[name=confirm]").check()
    mine.get_by_role("button", name="Block card ALICE-CARD-1").click()
    assert "is blocked" in mine.locator("#my-message").inner_text()
    screenshot(mine, "console-user-blocked-card.png")
    answer = _ocsp(site, "on-card")
    assert ": revoked" in answer and "keyCompromise" in answer, answer
    mine.context.close()
    transitions = [(r["actor"], r["role_name"], r["details"]["transition"]) for r in site.audit()
                   if r["event"] == "token.transition"]
    assert transitions == [("bob", RA, "suspend"), ("bob", RA, "resume"), ("bob", RA, "forgotten"),
                           ("bob", RA, "returned"), ("bob", RA, "returned"), ("alice", "User", "lost")]


def _forgotten_and_returned(site: Any, page: Any) -> None:
    """Forgotten at home: on hold; a temporary card stands in; returned: the holds go, the temporary card's
    certificate is revoked.  The temporary card is registered here as its personalization would
    (tests/integration/test_temporary_card.py personalizes one)."""
    temporary = _issue(site, "temporary")

    def stand_in(conn: Any) -> None:
        now = datetime.now(timezone.utc)
        permanent = conn.execute(select(token.c.id).where(token.c.serial == "ALICE-CARD-1")).scalar_one()
        temp_id = conn.execute(token.insert(), {"serial": "ALICE-TEMP-1", "owner": "alice", "status": "active",
                                                "kind": "temporary", "stands_in_for": permanent, "first_seen": now,
                                                "last_seen": now}).inserted_primary_key[0]
        conn.execute(certificate.update().where(certificate.c.serial == temporary).values(token_id=temp_id))
        conn.commit()

    form = page.locator("#transition-forgotten")
    form.locator("input[name=confirm]").check()
    form.locator("input[name=comment]").fill("left it at home")
    form.get_by_role("button").click()
    assert page.locator(".card-status").inner_text() == "forgotten"
    assert "certificateHold" in _ocsp(site, "on-card")
    site.read_db(stand_in)
    page.reload()
    assert "ALICE-TEMP-1" in page.locator(".card-stand-in").inner_text()
    screenshot(page, "console-card-forgotten.png")
    form = page.locator("#transition-returned")
    form.locator("input[name=confirm]").check()
    form.get_by_role("button").click()
    assert page.locator(".card-status").inner_text() == "active"
    assert "retired" in page.locator(".card-stand-in").inner_text()
    assert ": good" in _ocsp(site, "on-card")
    answer = _ocsp(site, "temporary")
    assert ": revoked" in answer and "cessationOfOperation" in answer, answer
