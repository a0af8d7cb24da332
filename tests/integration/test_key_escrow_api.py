"""The escrow's side of the agent API in-process (SQLite and PostgreSQL): who may fetch a key, and the proof.

The agent is played by plain HTTP calls; its "card" is software here, which
is exactly what lets the test answer the challenge wrongly on purpose.  The
real agent on a SoftHSM card is test_key_escrow.py.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from openxpki_py_token.key_transport import (
    CHALLENGE_PADDING,
    b64,
    challenge_peer,
    ecdh_proof,
    new_transport_key,
    open_private_key,
    public_text,
    transport_context,
    unb64,
)
from sqlalchemy import select
from test_key_escrow import escrowed_settings, key_forms
from test_personalization_server import CODE_RE, Agent, Browser, confirmed_agent, make_csr, page_action

from openxpki_py.db.schema import audit_log, key_escrow
from openxpki_py.escrow.cli import init_escrow_key
from openxpki_py.web.app import create_app


@pytest.fixture
def app(make_instance: Callable[..., Any], db_engine: Any) -> Any:
    inst = make_instance(db_engine, overrides=escrowed_settings)
    init_escrow_key(inst.services, only_if_needed=True)
    application = create_app(inst.config, inst.services)
    application.instance = inst  # type: ignore[attr-defined]
    return application


def _to_import(app: Any, serial: str, key: dict[str, Any] | None = None) -> tuple[Browser, int, Agent, dict[str, Any]]:
    """Logon certificate done with a software key; the task is now import_key for the encryption key."""
    browser, wf_id, agent = confirmed_agent(app, serial)
    task = agent.call("GET", "task").json
    assert task["task"] == "generate_key" and task["cert_type"] == "authentication"
    answer = agent.call("POST", "csr", {"cert_type": "authentication", "key_id": "01",
                                        "csr": make_csr(rsa.generate_private_key(65537, 2048))}).json
    agent.call("POST", "receipt", {"cert_type": "authentication", "serial": answer["serial"]})
    task = agent.call("GET", "task").json
    assert task["task"] == "import_key" and task["cert_type"] == "encryption", task
    assert task["usage"] == "decrypt" and task["key"] == (key or {"algorithm": "rsa", "size": 2048})
    assert "escrowed" in browser.get(f"/deeplink/workflow/{wf_id}").text
    return browser, wf_id, agent, task


def _fetch(agent: Agent, serial: str, cert_type: str = "encryption", **extra: Any) -> tuple[Any, Any]:
    transport = new_transport_key()
    body = {"cert_type": cert_type, "agent_key": public_text(transport), "token_serial": serial, **extra}
    return transport, agent.call("POST", "escrowed-key", body)


def test_only_the_confirmed_agent_at_this_step_gets_the_key_and_only_a_true_proof_counts(app: Any) -> None:
    browser, wf_id, agent, task = _to_import(app, "CARD-E1")

    # Not the confirmed card, no card named, another type: refused before any key leaves the HSM.
    for extra, status, code in (({"token_serial": "CARD-X"}, 409, "token.mismatch"),
                                ({"token_serial": None}, 409, "token.mismatch"),
                                ({"cert_type": "authentication"}, 409, "escrow.not_now"),
                                ({"agent_key": "not-a-key"}, 400, "escrow.transport"),
                                ({"rsa_proof": "rsa-raw"}, 422, "escrow.rsa_proof")):
        transport = new_transport_key()
        body = {"cert_type": "encryption", "agent_key": public_text(transport), "token_serial": "CARD-E1", **extra}
        refused = agent.call("POST", "escrowed-key", body)
        assert (refused.status_code, refused.json["error"]["code"]) == (status, code), refused.json
    # A second agent run for the same workflow, its phrase not confirmed by alice: nothing.
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    shown = browser.post(f"/personalize/{wf_id}/code", {"csrf_token": browser.csrf(page), "mode": "deeplink"})
    intruder = Agent(app)
    intruder.enroll(CODE_RE.search(shown.text).group(1))  # type: ignore[union-attr]
    _, refused = _fetch(intruder, "CARD-E1")
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "agent.unconfirmed")
    # The first agent's credential ended with the new code; alice confirms the new agent.
    assert page_action(browser, wf_id, "confirm_agent").status_code == 303
    agent = intruder

    transport, delivered = _fetch(agent, "CARD-E1")
    assert delivered.status_code == 200, delivered.json
    assert delivered.json["serial"] == task["serial"] and set(delivered.json) >= {"server_key", "nonce",
                                                                                   "ciphertext", "challenge"}
    pkcs8 = open_private_key(transport, delivered.json, transport_context(wf_id, "encryption", task["serial"]))
    key = serialization.load_der_private_key(bytes(pkcs8), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_pem_x509_certificate(task["certificate"].encode())
    assert cert.public_key() == key.public_key()

    # A rerun asks again: a new challenge replaces the old one, whose answer no longer counts.
    first_proof = key.decrypt(unb64(delivered.json["challenge"], "challenge"), CHALLENGE_PADDING)
    transport, delivered = _fetch(agent, "CARD-E1")
    assert delivered.status_code == 200
    stale = {"cert_type": "encryption", "serial": task["serial"], "token_serial": "CARD-E1",
             "key_proof": b64(first_proof)}
    assert agent.call("POST", "receipt", stale).json["error"]["code"] == "escrow.proof"

    receipt = {"cert_type": "encryption", "serial": task["serial"], "token_serial": "CARD-E1"}
    for proof in (None, b64(b"\x00" * 32), "!!"):
        body = receipt if proof is None else {**receipt, "key_proof": proof}
        refused = agent.call("POST", "receipt", body)
        assert refused.status_code == 422 and refused.json["error"]["code"] in ("escrow.proof", "field.invalid",
                                                                               "input.invalid"), refused.json
    assert agent.call("GET", "task").json["task"] == "import_key"  # nothing recorded
    proof = key.decrypt(unb64(delivered.json["challenge"], "challenge"), CHALLENGE_PADDING)
    installed = agent.call("POST", "receipt", {**receipt, "key_proof": b64(proof)}).json
    assert installed["status"] == "installed" and installed["next_task"]["task"] == "done"
    assert agent.call("GET", "task").json == installed["next_task"]

    inst = app.instance
    with inst.services.db.connect() as conn:
        record = conn.execute(select(key_escrow)).mappings().one()
        events = [r.event for r in conn.execute(select(audit_log.c.event).order_by(audit_log.c.id))]
    assert record["status"] == "installed" and record["certificate_serial"] == task["serial"]
    assert record["challenge_sha256"] is None and record["deliveries"] == 2
    assert {"escrow.generate", "escrow.deliver", "escrow.install"} <= set(events)
    # After the install the key is not handed out again through the agent API.
    _, late = _fetch(agent, "CARD-E1")
    assert (late.status_code, late.json["error"]["code"]) == (409, "escrow.not_now")
    assert re.search(r"escrowed", browser.get(f"/deeplink/workflow/{wf_id}").text)

    # The plaintext key is not in the database: a real dump (pg_dump / sqlite3's), every table, every blob.
    dump = database_dump(inst.services.db)
    assert "key_escrow" in dump and record["public_key_sha256"] in dump
    assert bytes(record["wrapped_key"]).hex()[:64] in dump.lower()  # blobs are in it, as hex: the grep can hit
    for name, form in key_forms(key).items():
        assert form not in dump, f"the escrowed private key ({name}) is in the database dump"


def test_an_escrowed_ec_key_counts_only_with_the_ecdh_answer_for_this_delivery(
        make_instance: Callable[..., Any], sqlite_engine: Any) -> None:
    inst = make_instance(sqlite_engine, overrides=lambda s: escrowed_settings(s, key="ec-p256"))
    init_escrow_key(inst.services, only_if_needed=True)
    app = create_app(inst.config, inst.services)
    _, wf_id, agent, task = _to_import(app, "CARD-EC", {"algorithm": "ec", "curve": "P-256"})
    transport, delivered = _fetch(agent, "CARD-EC")
    assert delivered.status_code == 200 and delivered.json["proof"] == "ecdh-hkdf-sha256", delivered.json
    context = transport_context(wf_id, "encryption", task["serial"])
    key = serialization.load_der_private_key(bytes(open_private_key(transport, delivered.json, context)), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert x509.load_pem_x509_certificate(task["certificate"].encode()).public_key() == key.public_key()
    challenge = unb64(delivered.json["challenge"], "challenge")
    secret = key.exchange(ec.ECDH(), challenge_peer(key.public_key(), challenge))

    receipt = {"cert_type": "encryption", "serial": task["serial"], "token_serial": "CARD-EC"}
    elsewhere = transport_context(wf_id + 1, "encryption", task["serial"])  # the answer for another workflow
    for wrong in (secret, ecdh_proof(secret, challenge, elsewhere)):
        refused = agent.call("POST", "receipt", {**receipt, "key_proof": b64(wrong)})
        assert (refused.status_code, refused.json["error"]["code"]) == (422, "escrow.proof"), refused.json
    answer = ecdh_proof(secret, challenge, context)
    assert agent.call("POST", "receipt", {**receipt, "key_proof": b64(answer)}).json["status"] == "installed"
    with inst.services.db.connect() as conn:
        record = conn.execute(select(key_escrow)).mappings().one()
    assert record["status"] == "installed" and record["key_spec"] == "ec-p256"


def database_dump(engine: Any) -> str:
    """The whole database as its own dump tool writes it (blobs as hex)."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        import sqlite3

        with sqlite3.connect(url.database) as conn:
            return "\n".join(conn.iterdump())
    dumped = subprocess.run(["pg_dump", "--host", url.host or "127.0.0.1", "--port", str(url.port or 5432),
                             "--username", url.username or "postgres", "--no-password", url.database],
                            capture_output=True, text=True, check=True, timeout=120)
    return dumped.stdout
