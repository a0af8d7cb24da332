"""A card's state guards what happens to it, whoever moves first: a card made unusable during its
personalization gets no certificate, a temporary card never outlives its days, and an operator acts on
their own card only as its owner may — through the in-process personalization (the agent played by HTTP
calls with software keys), the CA key in SoftHSM, SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from test_console import Operator, issue
from test_personalization_server import (  # noqa: F401 - approval_app is a fixture
    Agent, _personalize_fully, _up_to_approval, approval_app, confirmed_agent, make_csr, start)
from test_temporary_card import RA, app, card, ends_with_card, move, status  # noqa: F401 - app is the fixture

from openxpki_py.console import cards
from openxpki_py.db.schema import audit_log, certificate, token
from openxpki_py.errors import CardNotUsable, NotFound, NotPermitted, PolicyViolation
from openxpki_py.personalization.tokens import TokenInfo, register_token


def certificates_of(app: Any, serial: str) -> list[str]:  # noqa: F811
    with app.instance.services.db.connect() as conn:
        return [r.serial for r in conn.execute(select(certificate.c.serial).join(
            token, token.c.id == certificate.c.token_id).where(token.c.serial == serial))]


def next_csr(agent: Agent) -> Any:
    """Answer the agent's key task with a CSR; return the server's answer."""
    task = agent.call("GET", "task").json
    assert task["task"] == "generate_key", task
    key = (rsa.generate_private_key(65537, task["key"]["size"]) if task["key"]["algorithm"] == "rsa"
           else ec.generate_private_key(ec.SECP256R1()))
    return agent.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"], "csr": make_csr(key)})


def test_returned_ends_the_temporary_cards_personalization(app: Any) -> None:  # noqa: F811
    """alice confirmed her temporary card; the help desk presses "returned" before anything was issued."""
    _personalize_fully(app, "CARD-P")
    move(app, "CARD-P", "forgotten")
    browser, wf_id, agent = confirmed_agent(app, "CARD-T")
    move(app, "CARD-P", "returned")
    assert card(app, "CARD-T")["status"] == "retired"
    task = agent.call("GET", "task").json
    assert task["task"] == "failed" and "CARD-T is now retired" in task["message"], task
    assert "CARD-T is now retired" in browser.get(f"/deeplink/workflow/{wf_id}").text
    answer = agent.call("POST", "csr", {"cert_type": "authentication", "key_id": "01",
                                        "csr": make_csr(ec.generate_private_key(ec.SECP256R1()))})
    assert answer.status_code >= 400
    assert certificates_of(app, "CARD-T") == []


def test_a_card_made_unusable_gets_no_certificate_for_its_csr(app: Any) -> None:  # noqa: F811
    """However the card left `active` (here: the row changed under the workflow), its CSR ends the personalization."""
    browser, wf_id, agent = confirmed_agent(app, "CARD-S")
    with app.instance.services.db.begin() as conn:
        conn.execute(token.update().where(token.c.serial == "CARD-S").values(status="suspended"))
    next_csr(agent)
    task = agent.call("GET", "task").json
    assert task == {"task": "failed", "code": "token.not_active", "message": task["message"]}
    assert "CARD-S is suspended now" in task["message"]
    assert certificates_of(app, "CARD-S") == []


def test_the_ca_issues_nothing_for_a_card_that_is_not_active(app: Any) -> None:  # noqa: F811
    """The issuing transaction checks the card itself (an issuance child that outlived the transition)."""
    _personalize_fully(app, "CARD-L")
    move(app, "CARD-L", "lost")
    with pytest.raises(CardNotUsable, match="CARD-L is lost"):
        issue(app.instance, token_id=int(card(app, "CARD-L")["id"]))
    assert all(status(app, s) == ("revoked", "keyCompromise") for s in certificates_of(app, "CARD-L"))


def test_personalizing_the_temporary_card_again_gives_no_more_days(app: Any) -> None:  # noqa: F811
    """Its end is fixed when confirmed; a later personalization's certificates end then too, and none after it."""
    _personalize_fully(app, "CARD-P")
    move(app, "CARD-P", "forgotten")
    _, _, first = _personalize_fully(app, "CARD-T")
    ends = card(app, "CARD-T")["temporary_until"]
    with app.instance.services.db.begin() as conn:  # a day later, as far as the card's end is concerned
        conn.execute(token.update().where(token.c.serial == "CARD-T").values(temporary_until=ends - timedelta(days=1)))
    _, _, second = _personalize_fully(app, "CARD-T")
    assert second and all(ends_with_card(app, s, ends - timedelta(days=1)) for s in second)
    assert all(status(app, s) == ("revoked", "superseded") for s in first)

    with app.instance.services.db.begin() as conn:  # its days are over
        conn.execute(token.update().where(token.c.serial == "CARD-T").values(
            temporary_until=datetime.now(timezone.utc) - timedelta(minutes=1)))
    browser, wf_id, code = start(app)
    agent = Agent(app)
    agent.enroll(code)
    refused = agent.call("POST", "token", {"serial": "CARD-T"})
    assert refused.status_code >= 400 and "token.temporary_ended" in refused.text, refused.text
    with pytest.raises(PolicyViolation, match="days ended"):  # and the CA itself refuses
        issue(app.instance, token_id=int(card(app, "CARD-T")["id"]))


def test_an_operator_acts_on_their_own_card_only_as_its_owner(app: Any) -> None:  # noqa: F811
    """bob (RA Operator) cannot lift the hold security put on his card, nor mint himself a temporary card."""
    inst = app.instance
    with inst.services.db.begin() as conn:
        mine = register_token(conn, TokenInfo("CARD-BOB"), owner="bob", now=datetime.now(timezone.utc),
                              claim_lifetime=timedelta(days=1))
    cert = issue(inst, owner="bob", token_id=mine.id)
    move(app, "CARD-BOB", "suspend", actor="carol", role=RA)
    for name in ("resume", "forgotten", "damaged"):
        with pytest.raises(NotPermitted, match="another operator must") as refused:
            move(app, "CARD-BOB", name, actor="bob", role=RA)
        assert refused.value.code == "token.own_card"
    assert status(app, cert) == ("revoked", "certificateHold") and card(app, "CARD-BOB")["status"] == "suspended"
    with inst.services.db.connect() as conn:
        refusals = conn.execute(select(audit_log.c.details).where(
            audit_log.c.target == "CARD-BOB", audit_log.c.outcome == "refused")).scalars().all()
    assert len(refusals) == 3
    page = Operator(app, "bob").choose(RA).get("/console/cards/CARD-BOB").text
    assert 'id="transition-resume"' not in page and 'id="transition-lost"' in page  # lost: owner_may
    move(app, "CARD-BOB", "lost", actor="bob", role=RA)  # what an owner may, he may
    assert status(app, cert) == ("revoked", "keyCompromise")


def test_no_other_permanent_card_is_personalized_while_one_is_forgotten(app: Any) -> None:  # noqa: F811
    """Its full validity would side-step the temporary card's cap: refused until the help desk acts."""
    _personalize_fully(app, "CARD-P")
    _, _, other = _personalize_fully(app, "CARD-Q")
    move(app, "CARD-P", "forgotten")
    browser, wf_id, code = start(app)
    agent = Agent(app)
    agent.enroll(code)
    refused = agent.call("POST", "token", {"serial": "CARD-Q"})
    assert refused.status_code >= 400 and "token.stand_in_only" in refused.text, refused.text
    assert "card CARD-P is forgotten" in refused.text
    assert all(status(app, s) == ("valid", None) for s in other)  # what it has keeps working
    move(app, "CARD-P", "returned")
    assert _personalize_fully(app, "CARD-Q")[2]


def test_a_user_learns_nothing_of_cards_that_are_not_theirs(app: Any) -> None:  # noqa: F811
    """Someone else's card and no card at all: the same answer, both audited as refused."""
    _personalize_fully(app, "CARD-P")  # alice's
    answers = []
    for serial in ("CARD-P", "NO-SUCH-CARD"):
        with pytest.raises(NotFound) as refused:
            move(app, serial, "lost", actor="mallory", role="User")
        answers.append(str(refused.value).replace(serial, "X"))
    assert answers == ["you have no card X", "you have no card X"]
    with app.instance.services.db.connect() as conn:
        refusals = conn.execute(select(audit_log.c.target).where(
            audit_log.c.actor == "mallory", audit_log.c.outcome == "refused")).scalars().all()
    assert sorted(refusals) == ["CARD-P", "NO-SUCH-CARD"]
    assert card(app, "CARD-P")["status"] == "active"


def test_a_card_lost_while_its_certificate_awaits_approval_gets_none(approval_app: Any) -> None:  # noqa: F811
    """The issuance child waiting for an RA Operator ends with the card; its parent and the agent learn why."""
    browser, wf_id, agent, child_id = _up_to_approval(approval_app)
    svc = approval_app.instance.services
    cards.transition(svc.db, svc.ca, svc.config.cards.lifecycle, "CARD-APPROVAL", "lost", actor="carol",
                     role=RA, workflows=svc.workflows)
    engine = svc.workflows
    assert engine.get(child_id).proc_state == "failed" and engine.get(wf_id).state == "FAILED"
    task = agent.call("GET", "task").json
    assert task["task"] == "failed" and "CARD-APPROVAL is now lost" in task["message"], task
    with pytest.raises(Exception, match="not available"):  # nothing left for an RA Operator to approve
        engine.execute(child_id, "approve", actor="bob", role=RA, inputs={"comment": "ok"})
    assert [status(approval_app, s) for s in certificates_of(approval_app, "CARD-APPROVAL")] == [
        ("revoked", "keyCompromise")]  # the logon certificate issued before; no encryption certificate
