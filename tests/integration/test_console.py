"""The operators' console in-process: its services with the CA key in SoftHSM, and its pages
through the real WSGI app (Werkzeug test client; identity from the environ as Apache sets it).

Revocation, holds and their release are checked where relying parties look:
``openssl crl`` on the issued CRL and the OCSP responder's answers.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import select
from sqlalchemy.engine import Engine
from support.pkix import assert_crl_lints_clean
from werkzeug.test import Client, TestResponse

from openxpki_py.console import revocation, search, stuck
from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.audit.pending import chain_pending
from openxpki_py.db.schema import audit_log, workflow, workflow_context
from openxpki_py.errors import NotFound, NotPermitted, PolicyViolation
from openxpki_py.personalization.tokens import TokenInfo, register_token
from openxpki_py.web.app import create_app

RA, CA, USER = "RA Operator", "CA Operator", "User"
HOLD_REASON = "certificateHold"


def operator_roles(settings: dict[str, Any]) -> None:
    settings["auth"]["roles"] = {
        USER: {"command": ["/bin/true"]},
        RA: {"command": ["/bin/true"], "users": ["bob"]},
        CA: {"command": ["/bin/true"], "users": ["bob"]},
    }


@pytest.fixture
def inst(make_instance: Callable[..., Any], db_engine: Engine) -> Iterator[Any]:
    yield make_instance(db_engine, algorithm="ec-p256", overrides=operator_roles)


def issue(inst: Any, owner: str = "alice", token_id: int | None = None, validity_days: int | None = None) -> str:
    svc = inst.services
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    request = IssuanceRequest(csr=csr.public_bytes(serialization.Encoding.PEM), profile="smartcard_logon",
                              subject_attributes=svc.directory.find_user(owner).certificate_values(), owner=owner,
                              requester="test", role=CA, token_id=token_id, validity_days=validity_days)
    with svc.db.begin() as conn:
        return svc.ca.issue_certificate(conn, request).serial


def crl_text(inst: Any, tmp_path: Path) -> str:
    path = tmp_path / "current.crl"
    path.write_bytes(revocation.current_crl_der(inst.services.db, inst.services.ca))
    done = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(path), "-noout", "-text"],
                          capture_output=True, text=True, check=True)
    return done.stdout


def crl_entry(text: str, serial: str) -> str:
    """The lines of one revoked entry in ``openssl crl -text``, or "" when the serial is absent."""
    match = re.search(rf"Serial Number: 0*{serial.upper()}\n(.*?)(?=\n    Serial Number:|\n    Signature|\Z)",
                      text, re.S)
    return match.group(1) if match else ""


def events(inst: Any) -> list[tuple[str, str, str | None, str | None]]:
    chain_pending(inst.services.db)  # the CA's setup, run directly, as its CLI command would
    with inst.services.db.connect() as conn:
        return [(r.event, r.outcome, r.role_name, r.target)
                for r in conn.execute(select(audit_log).order_by(audit_log.c.id))]


def ocsp_status(inst: Any, serial: str) -> tuple[ocsp.OCSPCertStatus, Any]:
    svc = inst.services
    with svc.db.connect() as conn:
        ca_cert = svc.ca.certificate(conn)
        der = revocation.find(svc.db, serial)["der"]
    leaf = x509.load_der_x509_certificate(bytes(der))
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca_cert, hashes.SHA256()).build()
    answer = ocsp.load_der_ocsp_response(svc.ocsp.respond(request.public_bytes(serialization.Encoding.DER)))
    return answer.certificate_status, answer.revocation_reason


def test_revoke_hold_release_and_crl(inst: Any, tmp_path: Path) -> None:
    svc = inst.services
    svc.ocsp.create_key(actor="test")
    first, second, third = issue(inst), issue(inst), issue(inst)

    revocation.revoke(svc.db, svc.ca, first, "keyCompromise", actor="bob", role=RA, comment="card stolen")
    held = revocation.revoke(svc.db, svc.ca, second, "certificateHold", actor="bob", role=RA)
    assert held["status"] == "revoked" and held["revocation_reason"] == "certificateHold"
    assert ocsp_status(inst, second) == (ocsp.OCSPCertStatus.REVOKED, x509.ReasonFlags.certificate_hold)
    with pytest.raises(PolicyViolation, match="already revoked") as already:
        revocation.revoke(svc.db, svc.ca, first, "superseded", actor="bob", role=RA)
    assert already.value.code == "revoke.already"

    # The help desk may not sign a CRL out of schedule: refused and audited.
    with pytest.raises(NotPermitted):
        revocation.issue_crl_now(svc.db, svc.ca, actor="bob", role=RA)
    assert ("crl.issue", "refused", RA, None) in events(inst)
    assert revocation.crl_status(svc.db, svc.ca) is None
    issued, written = revocation.issue_crl_now(svc.db, svc.ca, actor="carol", role=CA)
    assert written and issued.revoked == 2
    status = revocation.crl_status(svc.db, svc.ca)
    assert status is not None and (status.number, status.entries, status.changed_since) == (issued.number, 2, 0)
    text = crl_text(inst, tmp_path)
    assert "Key Compromise" in crl_entry(text, first)
    assert "Certificate Hold" in crl_entry(text, second)
    assert crl_entry(text, third) == ""
    assert_crl_lints_clean(x509.load_der_x509_crl(issued.der), tmp_path)

    # Released: valid again, answered "good", and the next CRL leaves it out (removeFromCRL).
    released = revocation.release_hold(svc.db, svc.ca, second, actor="bob", role=RA, comment="card found")
    assert released["status"] == "valid" and released["revoked_at"] is None
    assert ocsp_status(inst, second)[0] == ocsp.OCSPCertStatus.GOOD
    assert revocation.crl_status(svc.db, svc.ca).changed_since == 1  # type: ignore[union-attr]
    with pytest.raises(PolicyViolation, match="not on hold"):
        revocation.release_hold(svc.db, svc.ca, second, actor="bob", role=RA)
    # A hold may still become a revocation for good.
    revocation.revoke(svc.db, svc.ca, third, "certificateHold", actor="bob", role=RA)
    revocation.revoke(svc.db, svc.ca, third, "keyCompromise", actor="bob", role=RA)
    revocation.issue_crl_now(svc.db, svc.ca, actor="carol", role=CA)
    text = crl_text(inst, tmp_path)
    assert crl_entry(text, second) == ""
    assert "Key Compromise" in crl_entry(text, third)
    assert ocsp_status(inst, third) == (ocsp.OCSPCertStatus.REVOKED, x509.ReasonFlags.key_compromise)

    audit = events(inst)
    assert ("cert.revoke", "ok", RA, first) in audit
    assert ("cert.hold", "ok", RA, second) in audit
    assert ("cert.hold.release", "ok", RA, second) in audit
    assert ("crl.issue", "ok", CA, str(issued.number)) in audit


def run_cli(inst: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``openxpki-py`` in its own process (it leaves the HSM session open until it exits)."""
    return subprocess.run([sys.executable, "-c", "import sys; from openxpki_py.cli import main; sys.exit(main())",
                           "--config", str(inst.config_path), *args], capture_output=True, text=True, check=False)


def test_cli_uses_the_same_services(inst: Any) -> None:
    serial = issue(inst)
    held = run_cli(inst, "--actor", "ops", "ca", "revoke", serial, "--reason", "certificateHold",
                   "--comment", "suspended by phone")
    assert held.returncode == 0 and "put on hold" in held.stdout, held.stderr
    assert run_cli(inst, "ca", "crl-info").returncode == 6  # not found: no CRL yet
    assert run_cli(inst, "ca", "crl").returncode == 0
    info = run_cli(inst, "ca", "crl-info", "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["entries"] == 1
    assert run_cli(inst, "ca", "release-hold", serial).returncode == 0
    assert revocation.find(inst.services.db, serial)["status"] == "valid"
    again = run_cli(inst, "ca", "release-hold", serial)
    assert again.returncode == 5 and "revoke.not_on_hold" in again.stderr  # policy: not on hold
    assert ("cert.hold", "ok", CA, serial) in events(inst)


# --- the pages -------------------------------------------------------------------------------

class Operator:
    """A browser-like client for one SSO login, with the session's CSRF token."""

    def __init__(self, app: Any, login: str) -> None:
        self.client = Client(app)
        self.environ = {"REMOTE_USER": login, "wsgi.url_scheme": "https"}
        self.csrf = ""

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.client.get(path, environ_base=self.environ, **kw)

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, **kw: Any) -> TestResponse:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return self.client.post(path, data=form, environ_base=self.environ, **kw)

    def choose(self, role: str) -> Operator:
        page = self.get("/login").get_data(as_text=True)
        self.csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        assert self.post("/login", {"role": role}).status_code == 303
        self.csrf = json.loads(self.get("/console?format=json").get_data(as_text=True))["csrf_token"]
        return self


@pytest.fixture
def app(inst: Any) -> Any:
    return create_app(inst.config, inst.services)


def test_pages_revoke_with_confirmation_csrf_and_roles(inst: Any, app: Any) -> None:
    serial = issue(inst)
    alice = Operator(app, "alice")
    assert alice.get("/console/crl").status_code == 403  # a User: offered User only, taken without asking
    assert alice.get(f"/console/certificates/{serial}").status_code == 403

    bob = Operator(app, "bob").choose(RA)
    page = bob.get(f"/console/certificates/{serial}").get_data(as_text=True)
    assert 'id="revoke-form"' in page and "Alice Example" in page
    confirm = bob.get(f"/console/certificates/{serial}/revoke",
                      query_string={"reason": "keyCompromise", "comment": "<script>x</script>"})
    text = confirm.get_data(as_text=True)
    assert "Yes, revoke it" in text and "<script>x" not in text and "&lt;script&gt;x" in text
    assert revocation.find(inst.services.db, serial)["status"] == "valid"  # the GET changed nothing

    form = {"reason": "keyCompromise", "comment": "lost on the train", "confirm": "yes"}
    assert bob.post(f"/console/certificates/{serial}/revoke", form, csrf=False).status_code == 403
    assert bob.post(f"/console/certificates/{serial}/revoke", {**form, "confirm": ""}).status_code == 400
    assert revocation.find(inst.services.db, serial)["status"] == "valid"
    done = bob.post(f"/console/certificates/{serial}/revoke", form)
    assert done.status_code == 303
    page = bob.get(done.headers["Location"]).get_data(as_text=True)
    assert f"Certificate {serial} revoked (keyCompromise)" in page and "keyCompromise" in page
    with inst.services.db.connect() as conn:
        row = conn.execute(select(audit_log).where(audit_log.c.event == "cert.revoke")).mappings().one()
    assert (row["actor"], row["role_name"], row["details"]["comment"]) == ("bob", RA, "lost on the train")

    # The RA Operator sees the CRL but may not issue one; the CA Operator may.
    assert 'id="issue-crl"' not in bob.get("/console/crl").get_data(as_text=True)
    assert bob.post("/console/crl").status_code == 403
    carol_like = Operator(app, "bob").choose(CA)
    assert carol_like.post("/console/crl").status_code == 303
    info = json.loads(carol_like.get("/console/crl", headers={"Accept": "application/json"}).get_data(as_text=True))
    assert info["entries"] == 1
    pem = carol_like.get(f"/console/certificates/{serial}/pem")
    assert x509.load_pem_x509_certificate(pem.get_data()).serial_number == int(serial, 16)


def test_json_variant_and_errors(inst: Any, app: Any) -> None:
    serial = issue(inst)
    bob = Operator(app, "bob").choose(RA)
    got = json.loads(bob.get(f"/console/certificates/{serial}?format=json").get_data(as_text=True))
    assert got["status"] == "valid" and got["owner"] == "alice" and "der" not in got
    answer = bob.client.post(f"/console/certificates/{serial}/revoke", environ_base=bob.environ,
                             data={"reason": "certificateHold", "confirm": "yes"},
                             headers={"X-CSRF-Token": bob.csrf, "Accept": "application/json"})
    assert answer.status_code == 200 and answer.json["result"]["revocation_reason"] == "certificateHold"  # type: ignore[index]
    missing = bob.get("/console/certificates/abc123?format=json")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"  # type: ignore[index]
    bad = bob.get("/console/certificates/zz?format=json")
    assert bad.status_code == 404


def test_search_person_card_certificate_workflow(inst: Any, app: Any) -> None:
    svc = inst.services
    now = datetime.now(timezone.utc)
    with svc.db.begin() as conn:
        card = register_token(conn, TokenInfo("CARD-0042", model="Virtual PIV"), owner="alice", now=now,
                              claim_lifetime=timedelta(days=1))
    serial = issue(inst, token_id=card.id)
    bob = Operator(app, "bob").choose(RA)
    for text in ("alice", "Example", "a.example@"):
        found = bob.get("/console/search", query_string={"kind": "person", "q": text}).get_data(as_text=True)
        assert "/console/people/alice" in found, text
    person = bob.get("/console/people/alice").get_data(as_text=True)
    assert "CARD-0042" in person and serial in person and "alice@example.com" in person
    to_card = bob.get("/console/search", query_string={"kind": "card", "q": "CARD-0042"})
    assert to_card.status_code == 303 and to_card.headers["Location"].endswith("/console/cards/CARD-0042")
    card_page = bob.get("/console/cards/CARD-0042").get_data(as_text=True)
    assert serial in card_page and "token.register" in card_page
    to_cert = bob.get("/console/search", query_string={"kind": "certificate", "q": serial.upper()})
    assert to_cert.headers["Location"].endswith(f"/console/certificates/{serial}")
    assert bob.get("/console/search", query_string={"kind": "card", "q": "NOPE"}).status_code == 404
    assert bob.get("/console/people/nobody-here").status_code == 404

    # Pagination: 30 certificates, 25 a page.
    for _ in range(29):
        issue(inst)
    first = search.certificates_of(svc.db, "alice", 1)
    second = search.certificates_of(svc.db, "alice", 2)
    assert len(first.items) == 25 and first.has_next and len(second.items) == 5 and not second.has_next
    assert 'rel="next"' in bob.get("/console/people/alice").get_data(as_text=True)


def stuck_workflow(inst: Any) -> int:
    """A crl_issuance left in exception (its retries used up while the HSM was away), with secrets in context."""
    now = datetime.now(timezone.utc)
    with inst.services.db.begin() as conn:
        wf_id = conn.execute(workflow.insert(), {
            "wf_type": "crl_issuance", "state": "ISSUE", "proc_state": "exception", "creator": "system",
            "creator_role": "System", "retry_count": 10, "version": 3,
            "last_error": "TokenError: the HSM did not answer", "created_at": now, "updated_at": now,
        }).inserted_primary_key[0]
        conn.execute(workflow_context.insert(), [
            {"workflow_id": wf_id, "ctx_key": "admin_pin", "ctx_value": "12345678-SEEKRIT"},
            {"workflow_id": wf_id, "ctx_key": "card", "ctx_value": {"serial": "C1", "puk": "87654321-SEEKRIT"}},
            {"workflow_id": wf_id, "ctx_key": "note", "ctx_value": "visible"},
        ])
    return int(wf_id)


def test_stuck_work_retry_and_fail(inst: Any, app: Any) -> None:
    retried, failed = stuck_workflow(inst), stuck_workflow(inst)
    queue = stuck.stuck_workflows(inst.services.db)
    assert {r["id"] for r in queue.items} == {retried, failed}
    bob = Operator(app, "bob").choose(RA)
    listing = bob.get("/console/stuck").get_data(as_text=True)
    assert f"/console/workflows/{retried}" in listing and "the HSM did not answer" in listing
    for path in (f"/console/workflows/{retried}", f"/console/workflows/{retried}?format=json"):
        shown = bob.get(path).get_data(as_text=True)
        assert "visible" in shown and "C1" in shown
        assert "SEEKRIT" not in shown and "(hidden: secret)" in shown
    assert bob.post(f"/console/workflows/{retried}/retry", {"comment": "HSM back"}, csrf=False).status_code == 403
    assert bob.post(f"/console/workflows/{retried}/retry", {"comment": "HSM back"}).status_code == 303
    wf = inst.services.workflows.get(retried)
    assert (wf.state, wf.proc_state) == ("PUBLISHED", "finished")  # the CRL was issued on retry
    assert wf.history[-2].note == "HSM back" or any(h.note == "HSM back" for h in wf.history)
    assert bob.post(f"/console/workflows/{failed}/fail", {"comment": ""}).status_code == 409  # a reason is needed
    assert bob.post(f"/console/workflows/{failed}/fail", {"comment": "obsolete"}).status_code == 303
    assert inst.services.workflows.get(failed).proc_state == "failed"
    assert stuck.stuck_workflows(inst.services.db).items == []
    audit = events(inst)
    assert ("workflow.retry", "ok", RA, f"workflow:{retried}") in audit
    assert ("workflow.fail", "ok", RA, f"workflow:{failed}") in audit
    alice = Operator(app, "alice")
    assert alice.get("/console/stuck").status_code == 403
    assert alice.get(f"/console/workflows/{retried}").status_code == 403


def test_audit_search_and_export(inst: Any, app: Any) -> None:
    from openxpki_py.audit import append_audit
    from openxpki_py.console import auditlog

    svc = inst.services
    serial = issue(inst)
    revocation.revoke(svc.db, svc.ca, serial, "keyCompromise", actor="bob", role=RA)
    with svc.db.begin() as conn:  # an actor name a spreadsheet would run as a formula
        append_audit(conn, actor="=HYPERLINK(\"http://evil\")", event="auth.login.refused", outcome="refused")
    bob = Operator(app, "bob").choose(RA)
    page = bob.get("/console/audit", query_string={"actor": "bob", "event": "cert.*"}).get_data(as_text=True)
    assert "cert.revoke" in page and "auth.role.grant" not in page and "cert.issue" not in page
    assert serial in bob.get("/console/audit", query_string={"target": serial}).get_data(as_text=True)
    today = datetime.now(timezone.utc).date().isoformat()
    got = bob.get("/console/audit", query_string={"since": today, "until": today, "outcome": "refused",
                                                  "format": "json"})
    assert [r["event"] for r in got.json["rows"]] == ["auth.login.refused"]  # type: ignore[index]
    assert bob.get("/console/audit", query_string={"since": "yesterday"}).status_code == 422

    csv_text = bob.get("/console/audit/export", query_string={"format": "csv"}).get_data(as_text=True)
    header, *lines = list(csv.reader(io.StringIO(csv_text)))
    assert header[:3] == ["id", "logged_at", "actor"] and "entry_hash" in header
    assert ["'=HYPERLINK(\"http://evil\")"] == [line[2] for line in lines if "HYPERLINK" in line[2]]  # no formula
    jsonl = bob.get("/console/audit/export", query_string={"format": "jsonl"}).get_data(as_text=True)
    records = [json.loads(line) for line in jsonl.splitlines()]
    assert all(b["prev_hash"] == a["entry_hash"] for a, b in zip(records, records[1:]))  # the chain, exported
    assert bob.get("/console/audit/export", query_string={"format": "xml"}).status_code == 422
    assert ("audit.export", "ok", RA, None) in events(inst)
    assert list(auditlog.rows(svc.db, auditlog.AuditFilter(event="cert.revoke")))[0]["target"] == serial
    assert Operator(app, "alice").get("/console/audit/export").status_code == 403

    exported = run_cli(inst, "console", "audit-export", "--format", "jsonl", "--event", "cert.*")
    assert exported.returncode == 0, exported.stderr
    assert {json.loads(line)["event"] for line in exported.stdout.splitlines()} == {"cert.issue", "cert.revoke"}


def test_card_lifecycle_changes_its_certificates(inst: Any, app: Any, tmp_path: Path) -> None:
    from openxpki_py.console import cards

    svc = inst.services
    now = datetime.now(timezone.utc)
    with svc.db.begin() as conn:
        card = register_token(conn, TokenInfo("CARD-7"), owner="alice", now=now, claim_lifetime=timedelta(days=1))
        other = register_token(conn, TokenInfo("CARD-8"), owner="carol", now=now, claim_lifetime=timedelta(days=1))
    logon, encryption = issue(inst, token_id=card.id), issue(inst, token_id=card.id)
    carols = issue(inst, owner="carol", token_id=other.id)
    status = lambda s: (revocation.find(svc.db, s)["status"], revocation.find(svc.db, s)["revocation_reason"])  # noqa: E731

    bob = Operator(app, "bob").choose(RA)
    page = bob.get("/console/cards/CARD-7").get_data(as_text=True)
    assert 'id="transition-suspend"' in page and 'id="transition-resume"' not in page
    assert bob.post("/console/cards/CARD-7/transition", {"transition": "suspend"}).status_code == 400  # unconfirmed
    assert bob.post("/console/cards/CARD-7/transition", {"transition": "suspend", "confirm": "yes"},
                    csrf=False).status_code == 403
    assert bob.post("/console/cards/CARD-7/transition", {"transition": "suspend", "confirm": "yes",
                                                         "comment": "on leave"}).status_code == 303
    assert status(logon) == status(encryption) == ("revoked", "certificateHold")
    assert search.find_card(svc.db, "CARD-7")["status"] == "suspended"
    assert bob.post("/console/cards/CARD-7/transition", {"transition": "suspend", "confirm": "yes"}).status_code == 422
    assert bob.post("/console/cards/CARD-7/transition", {"transition": "resume", "confirm": "yes"}).status_code == 303
    assert status(logon) == status(encryption) == ("valid", None)

    # The owner reports it lost from "My certificates"; she cannot touch carol's card.
    alice = Operator(app, "alice")
    mine = alice.get("/certificates").get_data(as_text=True)
    alice.csrf = re.search(r'name="csrf_token" value="([^"]+)"', mine).group(1)  # type: ignore[union-attr]
    assert "Block card CARD-7" in mine and "CARD-8" not in mine
    assert alice.post("/certificates/cards/CARD-8/lost", {"confirm": "yes"}).status_code == 404
    assert status(carols) == ("valid", None)
    assert alice.post("/console/cards/CARD-7/transition", {"transition": "terminate", "confirm": "yes"}).status_code == 403
    assert alice.post("/certificates/cards/CARD-7/lost", {"confirm": "yes"}).status_code == 303
    assert status(logon) == status(encryption) == ("revoked", "keyCompromise")
    assert "is blocked" in alice.get("/certificates").get_data(as_text=True)
    with pytest.raises(NotFound):  # another's card: not even whether it exists
        cards.transition(svc.db, svc.ca, svc.config.cards.lifecycle, "CARD-8", "terminate", actor="alice", role=USER, workflows=svc.workflows)
    with pytest.raises(NotPermitted):  # her own, but only "lost" is hers to do
        cards.transition(svc.db, svc.ca, svc.config.cards.lifecycle, "CARD-7", "terminate", actor="alice", role=USER, workflows=svc.workflows)

    # Damaged (superseded) and terminated (every certificate, held ones too: affiliationChanged).
    held = issue(inst, owner="carol", token_id=other.id)
    revocation.revoke(svc.db, svc.ca, held, HOLD_REASON, actor="bob", role=RA)
    result = cards.transition(svc.db, svc.ca, svc.config.cards.lifecycle, "CARD-8", "terminate", actor="bob", role=RA, comment="left", workflows=svc.workflows)
    assert set(result.certificates) == {carols, held}
    assert status(carols) == status(held) == ("revoked", "affiliationChanged")
    revocation.issue_crl_now(svc.db, svc.ca, actor="carol", role=CA)
    text = crl_text(inst, tmp_path)
    assert "Key Compromise" in crl_entry(text, logon) and "Affiliation Changed" in crl_entry(text, held)
    audit = events(inst)
    assert ("token.transition", "ok", RA, "CARD-7") in audit and ("token.transition", "ok", USER, "CARD-7") in audit
    assert ("token.transition", "refused", USER, "CARD-8") in audit

    damaged_card = issue(inst)
    with svc.db.begin() as conn:
        spare = register_token(conn, TokenInfo("CARD-9"), owner="alice", now=now, claim_lifetime=timedelta(days=1))
    damaged_card = issue(inst, token_id=spare.id)
    done = run_cli(inst, "token", "status", "CARD-9", "suspended")
    assert done.returncode == 0 and status(damaged_card) == ("revoked", "certificateHold"), done.stderr
    done = run_cli(inst, "console", "card", "CARD-9", "damaged", "--comment", "chip broken")
    assert done.returncode == 0, done.stderr
    assert status(damaged_card) == ("revoked", "superseded")
    assert run_cli(inst, "token", "status", "CARD-9", "active").returncode == 5  # destroyed stays destroyed


def test_hostile_input_is_not_found_or_refused_never_a_server_error(inst: Any, app: Any) -> None:
    serial = issue(inst)
    bob = Operator(app, "bob").choose(RA)
    for path in ("/console/cards/%00", "/console/people/a%00b", "/console/cards/" + "x" * 300,
                 "/console/certificates/%00", "/console/workflows/99999999999"):
        assert bob.get(path).status_code == 404, path
    for query in ({"kind": "person", "q": "a\x00b"}, {"kind": "person", "q": "*)(uid=*"},
                  {"kind": "workflow", "q": "\x00"}, "kind=person&q=%ED%A0%80%FF"):
        assert bob.get("/console/search", query_string=query).status_code == 200, query
    assert bob.get("/console/audit", query_string="actor=a%00&target=%ED%A0%80x").status_code == 200
    assert bob.post("/console/cards/%00/transition", {"transition": "lost", "confirm": "yes"}).status_code == 404
    for comment in ("a\x00b", "a\x1bb", "x" * 1001):
        answer = bob.post(f"/console/certificates/{serial}/revoke",
                          {"reason": "keyCompromise", "confirm": "yes", "comment": comment})
        assert answer.status_code == 422, comment
    assert revocation.find(inst.services.db, serial)["status"] == "valid"
    assert bob.post(f"/console/certificates/{serial}/revoke", {"reason": "cACompromise", "confirm": "yes"}
                    ).status_code == 422
