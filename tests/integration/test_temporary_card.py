"""A card forgotten at home: its certificates on hold, a temporary card with short-lived certificates
standing in, and both put right when it comes back — through the personalization in-process (the agent
played by HTTP calls with software keys), the CA key in SoftHSM, SQLite and PostgreSQL.

What relying parties see is checked where they look: ``openssl crl -text`` on the issued CRL (the
entry's reason, the hold's removal), and pkilint on the CRL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select
from support.pkix import assert_crl_lints_clean
from test_console import Operator, crl_entry, crl_text, issue, operator_roles, run_cli
from test_personalization_server import CSRF_RE, Agent, Browser, _personalize_fully, start

from openxpki_py.audit.pending import chain_queued
from openxpki_py.console import cards, revocation
from openxpki_py.db.schema import token
from openxpki_py.errors import NotPermitted, PolicyViolation
from openxpki_py.personalization.temporary import forgotten_cards, stand_in_for
from openxpki_py.personalization.tokens import TokenInfo, register_token
from openxpki_py.web.app import create_app

RA, CA, USER = "RA Operator", "CA Operator", "User"
DAYS = 5


def settings(values: dict[str, Any]) -> None:
    operator_roles(values)  # bob: RA and CA Operator
    values["cards"] = {"temporary": {"validity_days": DAYS}}


@pytest.fixture
def app(make_instance: Callable[..., Any], db_engine: Any) -> Any:
    inst = make_instance(db_engine, overrides=settings)
    application = create_app(inst.config, inst.services)
    application.instance = inst  # type: ignore[attr-defined]
    return application


def move(app: Any, serial: str, name: str, *, actor: str = "bob", role: str = RA) -> cards.TransitionResult:
    svc = app.instance.services
    try:
        return cards.transition(svc.db, svc.ca, svc.config.cards.lifecycle, serial, name, actor=actor, role=role,
                                workflows=svc.workflows)
    finally:
        chain_queued()  # its audit rows (refusals too), queued on PostgreSQL, as the console's request would


def status(app: Any, serial: str) -> tuple[str, str | None]:
    row = revocation.find(app.instance.services.db, serial)
    return row["status"], row["revocation_reason"]


def search_status(app: Any, serial: str) -> str:
    return str(card(app, serial)["status"])


def card(app: Any, serial: str) -> Any:
    with app.instance.services.db.connect() as conn:
        return conn.execute(select(token).where(token.c.serial == serial)).mappings().one()


def lasts(app: Any, serial: str, days: int) -> bool:
    """The certificate's notAfter is ``days`` after its issuance (to the second X.509 keeps, and the moment
    between signing and storing; notBefore says nothing here: it is set back for lagging clocks)."""
    row = revocation.find(app.instance.services.db, serial)
    cert = x509.load_der_x509_certificate(bytes(row["der"]))
    return abs(cert.not_valid_after_utc - row["created_at"] - timedelta(days=days)) < timedelta(seconds=3)


def ends_with_card(app: Any, serial: str, card_ends: datetime) -> bool:
    """The certificate's notAfter is its temporary card's end (X.509 keeps whole seconds)."""
    row = revocation.find(app.instance.services.db, serial)
    cert = x509.load_der_x509_certificate(bytes(row["der"]))
    return abs(cert.not_valid_after_utc - card_ends) < timedelta(seconds=1)


def set_card_end(app: Any, card_id: int, when: datetime) -> None:
    with app.instance.services.db.begin() as conn:
        conn.execute(token.update().where(token.c.id == card_id).values(temporary_until=when))


def published_crl(app: Any, tmp_path: Path) -> str:
    """Issue a CRL now (CA Operator), lint it, and return ``openssl crl -text``."""
    svc = app.instance.services
    issued, _ = revocation.issue_crl_now(svc.db, svc.ca, actor="carol", role=CA)
    assert_crl_lints_clean(issued.crl, tmp_path)
    return crl_text(app.instance, tmp_path)


def test_forgotten_card_temporary_card_and_return(app: Any, tmp_path: Path) -> None:
    _, _, permanent = _personalize_fully(app, "CARD-P")
    assert all(lasts(app, s, 365) for s in permanent)  # the profile's validity

    # Forgotten is the help desk's call here (owner_may: false): the owner is refused.
    with pytest.raises(NotPermitted):
        move(app, "CARD-P", "forgotten", actor="alice", role=USER)
    bob = Operator(app, "bob").choose(RA)
    page = bob.get("/console/cards/CARD-P").text
    assert 'id="transition-forgotten"' in page and 'id="transition-returned"' not in page
    done = bob.post("/console/cards/CARD-P/transition", {"transition": "forgotten", "confirm": "yes",
                                                          "comment": "left it at home, called at 8:05"})
    assert done.status_code == 303 and search_status(app, "CARD-P") == "forgotten"
    assert all(status(app, s) == ("revoked", "certificateHold") for s in permanent)
    text = published_crl(app, tmp_path)
    assert all("Certificate Hold" in crl_entry(text, s) for s in permanent)

    # The next new card alice personalizes stands in for it: the page says so before she confirms.
    browser, wf_id, code = start(app)
    agent = Agent(app)
    agent.enroll(code)
    assert agent.call("POST", "token", {"serial": "CARD-T"}).status_code == 200
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert 'id="temporary-card"' in page and "CARD-P" in page and f"valid\n    for {DAYS} days" in page
    page_cancel = browser.post(f"/personalize/{wf_id}/action", {"csrf_token": browser.csrf(page), "mode": "deeplink",
                                                                "action": "cancel", "version": _version(page)})
    assert page_cancel.status_code == 303
    _, _, temporary = _personalize_fully(app, "CARD-T")
    temp_card = card(app, "CARD-T")
    # Its end is fixed when it is confirmed, DAYS later; its certificates end then, to the second.
    assert temp_card["temporary_until"] - temp_card["first_seen"] == timedelta(days=DAYS)
    assert temporary and all(ends_with_card(app, s, temp_card["temporary_until"]) for s in temporary)
    assert (temp_card["kind"], temp_card["stands_in_for"]) == ("temporary", card(app, "CARD-P")["id"])
    mine = browser.get("/certificates").text
    assert "(temporary card, until " in mine

    # One temporary card per card: a third card is refused when reported, and nothing is registered.
    _, _, code = start(app)
    third = Agent(app)
    third.enroll(code)
    refused = third.call("POST", "token", {"serial": "CARD-T2"})
    assert (refused.status_code, refused.json["error"]["code"]) == (422, "token.temporary_exists"), refused.json
    with pytest.raises(PolicyViolation, match="temporary card"):
        move(app, "CARD-T", "forgotten")  # a temporary card is not "forgotten" in turn

    # The help desk's follow-up list: overdue once the temporary card has run out and the card is not back.
    listed = run_cli(app.instance, "console", "forgotten")
    assert listed.returncode == 0, listed.stderr
    assert [(c["serial"], c["overdue"], [t["serial"] for t in c["temporary_cards"]])
            for c in json.loads(listed.stdout)] == [("CARD-P", False, ["CARD-T"])]
    with app.instance.services.db.connect() as conn:
        later = forgotten_cards(conn, app.instance.services.config.cards,
                                datetime.now(timezone.utc) + timedelta(days=DAYS, hours=1))
    assert [(c["serial"], c["overdue"]) for c in later] == [("CARD-P", True)]

    # Its days over (its end moved back for a moment), the temporary card is not personalized again: the
    # help desk decides.
    ends = temp_card["temporary_until"]
    set_card_end(app, temp_card["id"], datetime.now(timezone.utc) - timedelta(minutes=1))
    _, _, code = start(app)
    renewal = Agent(app)
    renewal.enroll(code)
    assert renewal.call("POST", "token", {"serial": "CARD-T"}).json["error"]["code"] == "token.temporary_ended"
    set_card_end(app, temp_card["id"], ends)

    page = bob.get("/console/cards/CARD-P").text
    assert 'class="card-stand-in"' in page and "CARD-T" in page and 'id="transition-returned"' in page
    assert "stands in for" in bob.get("/console/cards/CARD-T").text

    # Returned: the holds are released, the temporary card's certificates revoked, all in one step.
    result = move(app, "CARD-P", "returned")
    assert (result.status, set(result.certificates)) == ("active", set(permanent))
    assert [(t.serial, t.status, set(t.certificates)) for t in result.temporary] == [
        ("CARD-T", "retired", set(temporary))]
    assert all(status(app, s) == ("valid", None) for s in permanent)
    assert all(status(app, s) == ("revoked", "cessationOfOperation") for s in temporary)
    text = published_crl(app, tmp_path)
    assert all(crl_entry(text, s) == "" for s in permanent)  # removeFromCRL: gone from the next CRL
    assert all("Cessation Of Operation" in crl_entry(text, s) for s in temporary)
    # The retired temporary card is not personalized again, and the permanent card is alice's as before.
    _, _, code = start(app)
    again = Agent(app)
    again.enroll(code)
    assert again.call("POST", "token", {"serial": "CARD-T"}).json["error"]["code"] == "token.unusable"


def _version(page: str) -> str:
    import re

    match = re.search(r'name="version" value="(\d+)"', page)
    assert match, page
    return match.group(1)


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_permanent_card_lost_while_the_temporary_card_is_out(app: Any, tmp_path: Path) -> None:
    _, _, permanent = _personalize_fully(app, "CARD-P")
    move(app, "CARD-P", "forgotten")
    _, _, temporary = _personalize_fully(app, "CARD-T")

    # Alice reports the forgotten card lost (it was not at home after all): its held certificates are
    # revoked for good (keyCompromise); the temporary card keeps working until its few days end.
    browser = Browser(app, "alice")
    mine = browser.get("/certificates").text
    assert "Block card CARD-P" in mine
    token_value = CSRF_RE.search(mine)
    assert token_value
    lost = browser.post("/certificates/cards/CARD-P/lost", {"confirm": "yes", "csrf_token": token_value.group(1)})
    assert lost.status_code == 303, lost.text
    assert all(status(app, s) == ("revoked", "keyCompromise") for s in permanent)
    assert all(status(app, s) == ("valid", None) for s in temporary)
    text = published_crl(app, tmp_path)
    assert all("Key Compromise" in crl_entry(text, s) for s in permanent)
    assert all(crl_entry(text, s) == "" for s in temporary)
    with pytest.raises(PolicyViolation, match="forgotten"):
        move(app, "CARD-P", "returned")

    # A temporary card is personalized only while its permanent card is forgotten; her next new card
    # is a permanent one again, with the profile's validity.
    _, _, code = start(app)
    agent = Agent(app)
    agent.enroll(code)
    assert agent.call("POST", "token", {"serial": "CARD-T"}).json["error"]["code"] == "token.temporary_ended"
    _, _, replacement = _personalize_fully(app, "CARD-N")
    assert card(app, "CARD-N")["kind"] == "permanent"
    assert all(lasts(app, s, 365) for s in replacement)

    # The help desk takes the temporary card back; a leaver's terminate would have revoked it too.
    result = move(app, "CARD-T", "retire")
    assert result.status == "retired" and all(status(app, s) == ("revoked", "cessationOfOperation")
                                              for s in temporary)
    assert move(app, "CARD-N", "damaged").status == "destroyed"
    text = published_crl(app, tmp_path)
    assert all("Cessation Of Operation" in crl_entry(text, s) for s in temporary)
    assert all("Superseded" in crl_entry(text, s) for s in replacement)


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_site_lets_owners_say_forgotten_and_forbids_the_lost_self_report(
        make_instance: Callable[..., Any], db_engine: Any) -> None:
    def site(values: dict[str, Any]) -> None:
        values["cards"] = {"lifecycle": {"transitions": {"lost": {"owner_may": False},
                                                         "forgotten": {"owner_may": True}}}}

    inst = make_instance(db_engine, overrides=site)
    app = create_app(inst.config, inst.services)
    app.instance = inst  # type: ignore[attr-defined]
    with inst.services.db.begin() as conn:
        permanent = register_token(conn, TokenInfo("CARD-P"), owner="alice", now=datetime.now(timezone.utc),
                                   claim_lifetime=timedelta(days=1))
    logon = issue(inst, token_id=permanent.id)
    # A temporary card's validity never exceeds the profile's (365 days for smartcard_logon).
    assert lasts(app, issue(inst, token_id=permanent.id, validity_days=3650), 365)
    assert lasts(app, issue(inst, token_id=permanent.id, validity_days=2), 2)
    alice = Operator(app, "alice")
    mine = alice.get("/certificates").text
    alice.csrf = CSRF_RE.search(mine).group(1)  # type: ignore[union-attr]
    assert "Block card" not in mine and 'id="my-forgotten-CARD-P"' in mine
    assert alice.post("/certificates/cards/CARD-P/lost", {"confirm": "yes"}).status_code == 403
    assert alice.post("/certificates/cards/CARD-P/transition", {"transition": "lost", "confirm": "yes"}
                      ).status_code == 403
    assert status(app, logon) == ("valid", None)
    said = alice.post("/certificates/cards/CARD-P/transition", {"transition": "forgotten", "confirm": "yes"})
    assert said.status_code == 303 and status(app, logon) == ("revoked", "certificateHold")

    # Bringing it back is still the help desk's: it revokes the temporary card's certificates.
    assert alice.post("/certificates/cards/CARD-P/transition", {"transition": "returned", "confirm": "yes"}
                      ).status_code == 403


@pytest.mark.parametrize("db_engine", ["sqlite", "postgresql"], indirect=True)
def test_two_cards_confirmed_at_once_cannot_both_stand_in(make_instance: Callable[..., Any], db_engine: Any) -> None:
    """The registration locks the forgotten card's row: the second confirmer waits, then is refused."""
    import threading

    inst = make_instance(db_engine)
    svc, now = inst.services, datetime.now(timezone.utc)
    with svc.db.begin() as conn:
        register_token(conn, TokenInfo("CARD-P"), owner="alice", now=now, claim_lifetime=timedelta(days=1))
    cards.transition(svc.db, svc.ca, svc.config.cards.lifecycle, "CARD-P", "forgotten", actor="bob", role=RA, workflows=svc.workflows)

    def confirm(serial: str) -> None:
        stand_in = stand_in_for(conn, svc.config.cards, owner="alice", serial=serial, now=now, lock=True)
        assert stand_in is not None
        register_token(conn, TokenInfo(serial), owner="alice", now=now, claim_lifetime=timedelta(days=1),
                       stands_in_for=stand_in.permanent_id, temporary_until=stand_in.until)

    outcome: list[BaseException | None] = []

    def second() -> None:
        try:
            with svc.db.begin() as other:
                stand_in_for(other, svc.config.cards, owner="alice", serial="CARD-T2", now=now, lock=True)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.append(exc)

    with svc.db.begin() as conn:
        confirm("CARD-T1")
        racer = threading.Thread(target=second)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waits for the first confirmation's transaction
    racer.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], PolicyViolation) and outcome[0].code == "token.temporary_exists"


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
def test_a_card_transition_and_a_pin_unblock_check_at_once_do_not_deadlock(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary card is usually a recycled card with a lower id than the card it stands in for.  "returned"
    used to lock the card, then its stand-ins; the unblock check locks the owner's cards in id order: crossed."""
    import threading

    from openxpki_py.unblock.activities import _owners_cards_locked

    db = app.instance.services.db
    now = datetime.now(timezone.utc)
    with db.begin() as conn:
        for serial in ("CARD-T", "CARD-P"):  # the temporary card first: the lower id
            register_token(conn, TokenInfo(serial=serial), owner="alice", now=now, claim_lifetime=timedelta(days=1))
        perm = conn.execute(select(token.c.id).where(token.c.serial == "CARD-P")).scalar_one()
        conn.execute(token.update().where(token.c.serial == "CARD-P").values(status="forgotten"))
        conn.execute(token.update().where(token.c.serial == "CARD-T").values(kind="temporary", stands_in_for=perm))
    checked = threading.Event()
    check_card = cards._check_card

    def check_then_linger(card_row: Any, step: Any) -> None:
        check_card(card_row, step)
        checked.set()
        threading.Event().wait(1.5)  # the unblock check comes in now

    monkeypatch.setattr(cards, "_check_card", check_then_linger)
    failures: list[BaseException] = []

    def returned() -> None:
        try:
            move(app, "CARD-P", "returned")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    def unblock_check() -> None:
        try:
            with db.begin() as conn:
                _owners_cards_locked(conn, "CARD-T")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    console = threading.Thread(target=returned)
    console.start()
    assert checked.wait(20)
    unblock = threading.Thread(target=unblock_check)
    unblock.start()
    console.join(30)
    unblock.join(30)
    assert not failures, failures
    assert (card(app, "CARD-P")["status"], card(app, "CARD-T")["status"]) == ("active", "retired")
