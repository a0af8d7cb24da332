"""The server plans a card's certificate types from the card's report (in-process, HTTP agent, no card).

The regression test for issue 17's defect: an OpenPGP card reported its
decryption slot as unable to sign, the server planned the encryption type
anyway, and the personalization waited in WAIT_FOR_CSR for a step no party
could complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from test_personalization_server import Agent, confirm, make_csr, page_action, start

from openxpki_py.db.schema import audit_log
from openxpki_py.web.app import create_app



def _slot(key_id: str, label: str, usage: str, cert_type: str, *, can_sign: bool = True, default: bool = False,
          keys: tuple[str, ...] = ("rsa-2048", "ec-p256", "ec-p384"), credential: str = "admin_pin") -> dict[str, Any]:
    """One slot as the agent reports it (docs/api.md, POST /api/v1/token)."""
    return {"key_id": key_id, "label": label, "usage": usage, "can_sign": can_sign,
            "can_decrypt": usage == "decrypt", "algorithms": list(keys), "key_generation": credential,
            "object_write": credential, "cert_types": [cert_type], "default_for_usage": default}


OPENPGP_REPORT = {"serial": "D2760001240103040006", "model": "PKCS#15 emulated", "label": "OpenPGP card (User PIN)",
                  "card_profile": "openpgp", "key_slots": [
                      _slot("01", "Signature key", "sign", "signature"),
                      _slot("02", "Encryption key", "decrypt", "encryption", can_sign=False, default=True),
                      _slot("03", "Authentication key", "sign", "authentication", default=True)]}
PIV_REPORT = {"serial": "PIV0001", "card_profile": "piv", "key_slots": [
    _slot("9a", "PIV Authentication", "sign", "authentication", default=True, credential="management_key"),
    _slot("9c", "Digital Signature", "sign", "signature", credential="management_key"),
    _slot("9d", "Key Management", "decrypt", "encryption", default=True, credential="management_key")]}


@pytest.fixture
def make_app(make_instance: Callable[..., Any], db_engine: Any) -> Callable[..., Any]:
    def build(personalization: dict[str, Any] | None = None) -> Any:
        def edit(settings: dict[str, Any]) -> None:
            if personalization is not None:
                settings["personalization"] = personalization
        inst = make_instance(db_engine, overrides=edit)
        application = create_app(inst.config, inst.services)
        application.instance = inst  # type: ignore[attr-defined]
        return application
    return build


def _reported(app: Any, report: dict[str, Any]) -> tuple[Any, int, Agent]:
    browser, wf_id, code = start(app)
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    answer = agent.call("POST", "token", report)
    assert answer.json["status"] == "awaiting_confirmation", answer.json
    return browser, wf_id, agent


def _issue_and_install(agent: Agent, task: dict[str, Any], key: Any) -> None:
    answer = agent.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"],
                                        "csr": make_csr(key)})
    assert answer.json["status"] == "issued", answer.json
    install = agent.call("GET", "task").json
    assert agent.call("POST", "receipt", {"cert_type": install["cert_type"], "key_id": install["key_id"],
                                          "serial": install["serial"]}).status_code == 200


def test_openpgp_card_is_never_asked_for_the_type_its_slot_cannot_sign(make_app: Callable[..., Any]) -> None:
    app = make_app()
    browser, wf_id, agent = _reported(app, OPENPGP_REPORT)
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    # Before the user confirms, the page shows the plan: what goes on the card, what cannot, and why.
    assert 'id="card-plan"' in page and "authentication certificate, rsa-2048 key made on the card" in page
    assert "Not on this card: encryption: its Encryption key (slot 02) cannot sign" in page
    confirm(browser, wf_id)

    task = agent.call("GET", "task").json
    assert (task["task"], task["cert_type"], task["index"], task["count"]) == ("generate_key", "authentication", 1, 1)
    assert task["key_id"] == "03"  # the card's authentication slot
    _issue_and_install(agent, task, rsa.generate_private_key(65537, 2048))
    done = agent.call("GET", "task").json
    assert done["task"] == "done" and [c["cert_type"] for c in done["certificates"]] == ["authentication"]
    assert done["skipped"][0]["cert_type"] == "encryption"
    assert done["skipped"][0]["skip_reason"] == "slot_cannot_sign"

    wf = app.instance.services.workflows.get(wf_id)
    entries = {e["type"]: e for e in wf.context["certificates"]}
    assert entries["encryption"]["status"] == "skipped"
    assert entries["encryption"]["skip_reason"] == "slot_cannot_sign"  # the seam for key escrow + import
    assert "report_card_unable" not in [h.action for h in wf.history]  # no round trip: planned up front
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "Your card is ready, without: encryption" in page and "Not on this card: encryption" in page
    with app.instance.services.db.connect() as conn:
        skips = [r.details for r in conn.execute(select(audit_log.c.details).where(
            audit_log.c.event == "personalization.type_skipped"))]
    assert len(skips) == 1
    details = skips[0] if isinstance(skips[0], dict) else json.loads(skips[0])
    assert details["type"] == "encryption" and details["skip_reason"] == "slot_cannot_sign"
    assert details["card_profile"] == "openpgp"


def test_piv_card_is_told_the_key_its_card_type_policy_chooses(make_app: Callable[..., Any]) -> None:
    certificates = [
        {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01", "usage": "sign"},
        {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02", "usage": "decrypt"}]
    app = make_app({"certificates": certificates, "card_types": {"piv": {"key": {"authentication": "ec-p256"}}}})
    browser, wf_id, agent = _reported(app, PIV_REPORT)
    confirm(browser, wf_id)
    first = agent.call("GET", "task").json
    assert (first["cert_type"], first["key_id"], first["key"]) == ("authentication", "9a",
                                                                   {"algorithm": "ec", "curve": "P-256"})
    # The CSR check holds the card to the planned key: an RSA key where P-256 was planned is refused.
    refused = agent.call("POST", "csr", {"cert_type": "authentication", "key_id": "9a",
                                         "csr": make_csr(rsa.generate_private_key(65537, 2048))})
    assert refused.status_code >= 400
    _issue_and_install(agent, first, ec.generate_private_key(ec.SECP256R1()))
    second = agent.call("GET", "task").json
    assert (second["cert_type"], second["key"]) == ("encryption", {"algorithm": "rsa", "size": 2048})


def test_a_card_that_can_hold_none_of_the_types_ends_with_the_reason(make_app: Callable[..., Any]) -> None:
    only_encryption = [{"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02",
                        "usage": "decrypt"}]
    app = make_app({"certificates": only_encryption})
    browser, wf_id, agent = _reported(app, OPENPGP_REPORT)
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "cannot hold any of your certificates" in page
    assert page_action(browser, wf_id, "confirm_token").status_code == 303
    wf = app.instance.services.workflows.get(wf_id)
    assert wf.state == "FAILED" and wf.context["failure"]["code"] == "card.unsuitable"
    task = agent.call("GET", "task").json
    assert task["task"] == "failed" and task["code"] == "card.unsuitable"
    assert "can hold none of the certificates" in task["message"]


def test_a_malformed_card_report_is_refused_with_a_clear_error(make_app: Callable[..., Any]) -> None:
    app = make_app()
    _, wf_id, code = start(app)
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    answer = agent.call("POST", "token", {"serial": "X1", "card_profile": "piv",
                                          "key_slots": [{"key_id": "9a", "can_sign": "maybe"}]})
    assert answer.status_code == 400 and answer.json["error"]["code"] == "request.invalid"
    assert "key_slots[0].can_sign" in answer.json["error"]["message"]
    assert app.instance.services.workflows.get(wf_id).state == "WAIT_FOR_TOKEN"  # nothing lost: report again
    assert agent.call("POST", "token", {"serial": "X1"}).json["status"] == "awaiting_confirmation"
