"""Escrowed keys in the operators' console, in-process: the key-recovery key in SoftHSM, the pages
through the real WSGI app (identity from the environ as Apache sets it), SQLite and PostgreSQL.

Four eyes through the pages: one officer twice, the key's owner, a request without a reason,
a wrong role and a missing CSRF token are all refused, and nothing is released until two
different officers approved; the released PKCS#12 opens with the password shown once.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from openxpki_py_token.keyspec import KeySpec
from sqlalchemy import select
from sqlalchemy.engine import Engine
from werkzeug.test import Client, TestResponse

from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.db.schema import audit_log, key_escrow
from openxpki_py.escrow.cli import init_escrow_key
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

    # The release: confirmed, once; the PKCS#12 opens with the password shown on this page only.
    assert dave.post(release).status_code == 400
    answer = dave.post(release, {"confirm": "yes"})
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    text = answer.get_data(as_text=True)
    password = re.search(r'id="pkcs12-password">([^<]+)<', text).group(1)  # type: ignore[union-attr]
    p12 = base64.b64decode(re.search(r'base64,([A-Za-z0-9+/=]+)"', text).group(1))  # type: ignore[union-attr]
    key, p12_cert, _ = pkcs12.load_key_and_certificates(p12, password.encode())
    assert p12_cert == cert and key is not None
    assert key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert dave.post(release, {"confirm": "yes"}, headers=JSON).status_code == 409  # once only
    record_page = carol.page(f"/console/escrow/{escrow_id}")
    assert "RELEASED" in record_page and password not in record_page

    # Every step audited, by the person who took it.
    assert events(inst, "escrow.release") == [("escrow.release", "dave")]
    with inst.services.db.connect() as conn:
        rows = conn.execute(select(audit_log.c.details)).scalars().all()
    assert all(password not in json.dumps(d, default=str) for d in rows)


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
