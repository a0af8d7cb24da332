"""Escrowed keys in the operators' console, in-process: the key-recovery key in SoftHSM, the pages
through the real WSGI app (identity from the environ as Apache sets it), SQLite and PostgreSQL.

Four eyes through the pages: one officer twice, the key's owner, a request without a reason,
a wrong role and a missing CSRF token are all refused, and nothing is released until two
different officers approved.  The release gives the officers nothing: the owner collects the
PKCS#12 once on "My certificates", and it opens (OpenSSL) with the password shown to her only;
another user, an officer, a second collection and a late one are refused, all audited.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from openxpki_py_token.keyspec import KeySpec
from sqlalchemy import select
from sqlalchemy.engine import Engine
from test_console import run_cli
from test_key_escrow_api import database_dump
from werkzeug.test import Client, TestResponse

from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.audit.pending import chain_pending
from openxpki_py.db.schema import audit_log, key_escrow, workflow
from openxpki_py.escrow.cli import init_escrow_key
from openxpki_py.escrow.recovery import approve_recovery, release_recovered_key, request_recovery
from openxpki_py.web.app import create_app

RA, USER, KRO = "RA Operator", "User", "Key Recovery Officer"


def escrow_roles(settings: dict[str, Any]) -> None:
    settings["personalization"] = {"certificates": [
        {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01", "usage": "sign"},
        {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02", "usage": "decrypt",
         "key_origin": "escrowed"},
    ]}
    settings["auth"]["roles"] = {
        USER: {"command": ["/bin/true"]},
        RA: {"command": ["/bin/true"], "users": ["bob"]},
        KRO: {"command": ["/bin/true"], "users": ["carol", "dave", "alice"]},
    }
    # an uncollected recovered key expires after 3 days here (7 by default)
    settings.setdefault("workflow", {})["state_timeouts"] = {"key_recovery.READY_FOR_OWNER": 3 * 86400}


@pytest.fixture
def inst(make_instance: Callable[..., Any], db_engine: Engine) -> Any:
    inst = make_instance(db_engine, overrides=escrow_roles)
    assert init_escrow_key(inst.services, only_if_needed=True)
    return inst


@pytest.fixture
def app(inst: Any) -> Any:
    return create_app(inst.config, inst.services)


def escrowed_certificate(inst: Any, owner: str = "alice") -> tuple[int, x509.Certificate]:
    """An escrowed key and the certificate issued for it, as the personalization makes them (without a card)."""
    svc = inst.services
    with svc.db.begin() as conn:
        key = svc.escrow.generate(conn, owner=owner, cert_type="encryption", profile="encryption",
                                  spec=KeySpec.parse("rsa-2048"), workflow_id=None, actor="test", role="System")
        request = IssuanceRequest(csr=key.csr_pem.encode(), profile="encryption",
                                  subject_attributes=svc.directory.find_user(owner).certificate_values(),
                                  owner=owner, requester="test", key_origin="server-escrowed")
        issued = svc.ca.issue_certificate(conn, request)
        conn.execute(key_escrow.update().where(key_escrow.c.id == key.id)
                     .values(status="installed", certificate_serial=issued.serial))
    return key.id, issued.certificate


class Person:
    """A browser-like client for one SSO login, with the session's CSRF token."""

    def __init__(self, app: Any, login: str, role: str) -> None:
        self.client = Client(app)
        self.environ = {"REMOTE_USER": login, "wsgi.url_scheme": "https"}
        page = self.get("/login").get_data(as_text=True)
        self.csrf = self._token(page)
        if "name=\"role\"" in page:
            assert self.post("/login", {"role": role}).status_code == 303
        self.csrf = self._token(self.get("/").get_data(as_text=True))

    @staticmethod
    def _token(page: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.client.get(path, environ_base=self.environ, **kw)

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, **kw: Any) -> TestResponse:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return self.client.post(path, data=form, environ_base=self.environ, **kw)

    def page(self, path: str) -> str:
        response = self.get(path)
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        return response.get_data(as_text=True)


def error_code(response: TestResponse) -> str:
    return str(json.loads(response.get_data(as_text=True))["error"]["code"])


def events(inst: Any, prefix: str) -> list[tuple[str, str]]:
    chain_pending(inst.services.db)  # what the worker round and the direct calls queued
    with inst.services.db.connect() as conn:
        rows = conn.execute(select(audit_log.c.event, audit_log.c.actor).order_by(audit_log.c.id)).all()
    return [(e, a) for e, a in rows if e.startswith(prefix)]


JSON = {"Accept": "application/json"}


def test_recovery_through_the_pages_under_four_eyes(inst: Any, app: Any) -> None:
    escrow_id, cert = escrowed_certificate(inst)
    serial = format(cert.serial_number, "x")
    carol, dave = Person(app, "carol", KRO), Person(app, "dave", KRO)
    alice_officer = Person(app, "alice", KRO)

    # The records: owner, key fingerprint, certificate, status; never key material.
    listing = carol.page("/console/escrow")
    assert f'data-escrow-id="{escrow_id}"' in listing and serial in listing and "installed" in listing
    with inst.services.db.connect() as conn:
        blob = bytes(conn.execute(select(key_escrow.c.wrapped_key)).scalar_one())
    data = json.loads(carol.get("/console/escrow?owner=alice", headers=JSON).get_data(as_text=True))
    assert [r["id"] for r in data["records"]] == [escrow_id]
    assert set(data["records"][0]) & {"wrapped_key", "wrap_nonce", "public_key_der"} == set()
    assert base64.b64encode(blob).decode()[:24] not in listing
    assert carol.get("/console/escrow?owner=bob", headers=JSON).get_json()["records"] == []

    # Asking: a reason is required, the CSRF token too; the owner cannot ask for their own key.
    url = f"/console/escrow/{escrow_id}/recover"
    assert carol.post(url, {"reason": "card lost"}, csrf=False).status_code == 403
    refused = carol.post(url, {"reason": ""}, headers=JSON)
    assert refused.status_code == 422 and "reason" in refused.get_data(as_text=True)
    own = alice_officer.post(url, {"reason": "my card is gone"}, headers=JSON)
    assert own.status_code == 422 and error_code(own) == "recovery.refused"
    assert 'id="recover-form"' not in alice_officer.page(f"/console/escrow/{escrow_id}")
    assert carol.post("/console/escrow/999999/recover", {"reason": "x"}, headers=JSON).status_code == 404
    asked = carol.post(url, {"reason": "card lost, ticket 4711"})
    assert asked.status_code == 303
    assert "waiting for two Key Recovery Officers" in carol.page(asked.headers["Location"])
    pending = carol.get("/console/escrow", headers=JSON).get_json()["recoveries"]
    assert [(p["escrow_id"], p["owner"], p["requested_by"], p["reason"], p["state"]) for p in pending] == [
        (escrow_id, "alice", "carol", "card lost, ticket 4711", "PENDING_APPROVAL")]
    wf_id = pending[0]["id"]

    # Approving: one officer twice counts once, the owner never; nothing is released before two approved.
    approve, release = f"/console/escrow/recoveries/{wf_id}/approve", f"/console/escrow/recoveries/{wf_id}/release"
    assert carol.post(approve, {"comment": "checked the ticket"}).status_code == 303
    twice = carol.post(approve, headers=JSON)
    assert twice.status_code == 422 and error_code(twice) == "approval.same_person"
    owner = alice_officer.post(approve, headers=JSON)
    assert owner.status_code == 422 and error_code(owner) == "recovery.own_key"
    early = carol.post(release, {"confirm": "yes"}, headers=JSON)
    assert early.status_code == 409
    assert dave.post(approve, {"comment": "ok"}, csrf=False).status_code == 403
    page = dave.page("/console/escrow")
    assert "1 of 2" in page and 'class="actions approve-form"' in page
    assert 'class="actions approve-form"' not in carol.page("/console/escrow")  # carol has approved already
    assert dave.post(approve, {"comment": "ok"}).status_code == 303

    early = Person(app, "alice", USER).post(f"/certificates/recovered/{wf_id}", {"confirm": "yes"})
    assert early.status_code == 409 and "not released to you yet" in early.get_data(as_text=True)

    # The release: confirmed, once; the officer gets nothing of the key, the owner is to collect it.
    assert dave.post(release).status_code == 400
    answer = dave.post(release, {"confirm": "yes"})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]  # no page with a key or password
    shown = dave.page(answer.headers["Location"])
    assert "released to alice, who collects the key" in shown
    assert "pkcs12-password" not in shown and "data:application/x-pkcs12" not in shown
    assert dave.post(release, {"confirm": "yes"}, headers=JSON).status_code == 409  # once only
    record_page = carol.page(f"/console/escrow/{escrow_id}")
    assert "READY_FOR_OWNER" in record_page and "waiting for alice to collect it" in record_page
    assert f'data-recovery-id="{wf_id}"' in carol.page("/console/escrow")  # still waiting (for alice)

    # Every step audited, by the person who took it; nothing unsealed yet.
    assert events(inst, "escrow.") == [("escrow.generate", "test"), ("escrow.collect", "alice"),
                                       ("escrow.release", "dave")]  # alice's early attempt: refused


def released_recovery(inst: Any, escrow_id: int) -> int:
    """A recovery two officers approved and released to the key's owner (the service calls the pages make)."""
    engine = inst.services.workflows
    wf_id = int(request_recovery(engine, escrow_id, reason="card lost, ticket 4711", actor="carol").id)
    approve_recovery(engine, wf_id, actor="carol")
    approve_recovery(engine, wf_id, actor="dave")
    assert release_recovered_key(engine, wf_id, actor="dave").state == "READY_FOR_OWNER"
    return wf_id


def test_the_owner_collects_the_released_key_once(inst: Any, app: Any, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    escrow_id, cert = escrowed_certificate(inst)
    wf_id = released_recovery(inst, escrow_id)
    collect = f"/certificates/recovered/{wf_id}"

    # "My certificates" tells alice, and nobody else, that a key waits for her, and until when (config: 3 days).
    alice = Person(app, "alice", USER)
    mine = alice.page("/certificates")
    form = re.search(rf'id="my-recovered-keys">(.*?)<form[^>]*data-recovery-id="{wf_id}">(.*?)</form>', mine, re.S)
    assert form and "Collect my encryption key" in form.group(2) and "released by dave" in form.group(1)
    deadline = inst.services.workflows.get(wf_id).wake_at
    assert timedelta(days=3) - timedelta(minutes=5) < deadline - datetime.now(timezone.utc) <= timedelta(days=3)
    assert deadline.strftime("%Y-%m-%d %H:%M") in form.group(1)

    # Anyone else: another user, an officer in the User role, is told "not found"; an officer's session is refused.
    bob, dave_user = Person(app, "bob", USER), Person(app, "dave", USER)
    assert 'id="my-recovered-keys"' not in bob.page("/certificates")
    for other in (bob, dave_user):
        refused = other.post(collect, {"confirm": "yes"})
        assert refused.status_code == 404 and "pkcs12-password" not in refused.get_data(as_text=True)
    assert Person(app, "dave", KRO).post(collect, {"confirm": "yes"}).status_code == 403
    assert alice.post(collect, {"confirm": "yes"}, csrf=False).status_code == 403
    assert alice.post(collect).status_code == 400  # the box says: shown once
    assert inst.services.workflows.get(wf_id).state == "READY_FOR_OWNER"  # none of that collected it

    # alice collects: the password shown once, the PKCS#12 as a download in the same answer, not cached.
    answer = alice.post(collect, {"confirm": "yes"})
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    text = answer.get_data(as_text=True)
    password = re.search(r'id="pkcs12-password">([^<]+)<', text).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(r"[a-z2-9]{5}(-[a-z2-9]{5}){4}", password)  # ~124 bits, in readable groups
    link = re.search(r'href="data:application/x-pkcs12;base64,([A-Za-z0-9+/=]+)"', text)
    assert link
    encoded = link.group(1)
    p12 = base64.b64decode(encoded)
    p12_path = tmp_path / "alice.p12"
    p12_path.write_bytes(p12)
    opened = subprocess.run(["openssl", "pkcs12", "-in", str(p12_path), "-passin", f"pass:{password}", "-noenc"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert opened.returncode == 0, opened.stderr
    key = serialization.load_pem_private_key(re.search(  # type: ignore[union-attr]
        r"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----", opened.stdout, re.S).group(0).encode(), None)
    assert spki(key.public_key()) == spki(cert.public_key())
    assert x509.load_pem_x509_certificate(re.search(  # type: ignore[union-attr]
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", opened.stdout, re.S).group(0).encode()) == cert
    info = subprocess.run(["openssl", "pkcs12", "-in", str(p12_path), "-passin", f"pass:{password}", "-info",
                           "-noout"], capture_output=True, text=True, timeout=60, check=False)
    assert "AES-256-CBC" in info.stderr and "hmacWithSHA256" in info.stderr and "RC2" not in info.stderr

    # Once: a second collection is refused by name; the page no longer offers it.
    again = alice.post(collect, {"confirm": "yes"})
    assert again.status_code == 409 and "you collected this key already" in again.get_data(as_text=True)
    assert 'id="my-recovered-keys"' not in alice.page("/certificates")
    officers_see = Person(app, "carol", KRO).page(f"/console/escrow/{escrow_id}")
    assert "collected by alice at" in officers_see and password not in officers_see

    # Audited: each refusal and the one collection, by whom.
    with inst.services.db.connect() as conn:
        rows = conn.execute(select(audit_log.c.event, audit_log.c.actor, audit_log.c.outcome, audit_log.c.details)
                            .where(audit_log.c.event == "escrow.collect").order_by(audit_log.c.id)).all()
    assert [(e, a, o, (d or {}).get("reason")) for e, a, o, d in rows] == [
        ("escrow.collect", "bob", "refused", "not_owner"), ("escrow.collect", "dave", "refused", "not_owner"),
        ("escrow.collect", "alice", "ok", None), ("escrow.collect", "alice", "refused", "collected")]

    # Neither the password nor the file: not in the database (audit rows included), the workflow, the logs.
    dump = database_dump(inst.services.db)
    context = json.dumps(inst.services.workflows.get(wf_id).context, default=str)
    fragments = [password, encoded[100:160], p12[100:130].hex(), p12[100:130].hex().upper()]
    for place, where in (("database", dump), ("workflow context", context), ("log", caplog.text)):
        for fragment in fragments:
            assert fragment not in where, f"the one-time password or the PKCS#12 is in the {place}"


def test_an_uncollected_key_expires(inst: Any, app: Any) -> None:
    escrow_id, _ = escrowed_certificate(inst)
    wf_id = released_recovery(inst, escrow_id)
    engine = inst.services.workflows
    with inst.services.db.begin() as conn:  # the deadline passes
        conn.execute(workflow.update().where(workflow.c.id == wf_id)
                     .values(wake_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert engine.resume_due() >= 1 and engine.get(wf_id).state == "EXPIRED"
    assert events(inst, "escrow.collection_expired") == [("escrow.collection_expired", "worker")]
    alice = Person(app, "alice", USER)
    assert 'id="my-recovered-keys"' not in alice.page("/certificates")
    late = alice.post(f"/certificates/recovered/{wf_id}", {"confirm": "yes"})
    assert late.status_code == 409 and "not collected in time" in late.get_data(as_text=True)
    assert "not collected by alice in time" in Person(app, "carol", KRO).page(f"/console/escrow/{escrow_id}")


def test_an_officer_withdraws_a_release_before_the_owner_collects(inst: Any, app: Any) -> None:
    escrow_id, _ = escrowed_certificate(inst)
    wf_id = released_recovery(inst, escrow_id)
    carol = Person(app, "carol", KRO)
    page = carol.page(f"/console/escrow/{escrow_id}")
    assert "withdraw-form" in page and f"/console/escrow/recoveries/{wf_id}/withdraw" in page
    path = f"/console/escrow/recoveries/{wf_id}/withdraw"
    assert carol.post(path, {"reason": "ticket closed"}, csrf=False).status_code == 403  # CSRF
    assert carol.post(path, {"reason": " "}, headers=JSON).status_code == 400  # a reason is required
    assert Person(app, "bob", RA).post(path, {"reason": "x"}).status_code == 403  # officers only
    done = carol.post(path, {"reason": "ticket 4711 closed"})
    assert done.status_code == 303 and inst.services.workflows.get(wf_id).state == "WITHDRAWN"
    with inst.services.db.connect() as conn:
        details = conn.execute(select(audit_log.c.details).where(audit_log.c.event == "escrow.withdraw")).scalar_one()
    assert (json.loads(details) if isinstance(details, str) else details)["reason"] == "ticket 4711 closed"
    assert events(inst, "escrow.withdraw") == [("escrow.withdraw", "carol")]
    alice = Person(app, "alice", USER)
    assert 'id="my-recovered-keys"' not in alice.page("/certificates")
    late = alice.post(f"/certificates/recovered/{wf_id}", {"confirm": "yes"})
    assert late.status_code == 409 and "withdrew this release" in late.get_data(as_text=True)
    assert "release withdrawn before alice collected it" in carol.page(f"/console/escrow/{escrow_id}")

    # the CLI: escrow withdraw, on a second release
    second = released_recovery(inst, escrow_id)
    out = run_cli(inst, "--actor", "dave", "escrow", "withdraw", str(second), "--reason", "asked by mistake")
    assert out.returncode == 0 and "WITHDRAWN" in out.stdout, out.stderr
    assert inst.services.workflows.get(second).state == "WITHDRAWN"


def spki(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def test_roles_person_page_and_my_certificates(inst: Any, app: Any) -> None:
    escrow_id, cert = escrowed_certificate(inst)
    serial = format(cert.serial_number, "x")
    bob = Person(app, "bob", RA)
    # An operator sees the records and a person's link to them, but asks, approves and releases nothing.
    assert f'data-escrow-id="{escrow_id}"' in bob.page("/console/escrow")
    assert 'id="recover-form"' not in bob.page(f"/console/escrow/{escrow_id}")
    assert 'id="person-escrow"' in bob.page("/console/people/alice")
    assert bob.post(f"/console/escrow/{escrow_id}/recover", {"reason": "x"}).status_code == 403
    # A User sees none of it, and their own escrowed key is marked on "My certificates".
    alice = Person(app, "alice", USER)
    assert alice.get("/console/escrow").status_code == 403
    assert alice.post(f"/console/escrow/{escrow_id}/recover", {"reason": "x"}).status_code == 403
    mine = alice.page("/certificates")
    row = re.search(rf'data-serial="{serial}">(.*?)</tr>', mine, re.S).group(1)  # type: ignore[union-attr]
    assert "escrowed (recoverable)" in row
    with inst.services.db.connect() as conn:
        assert conn.execute(select(key_escrow.c.id)).scalars().all() == [escrow_id]  # nothing changed
