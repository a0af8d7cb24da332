"""PIN unblock, the server's side: who may start one, which agent gets the card's PUK (once), rate limits.

The whole flow with the real agent and a virtual PIV card through pcscd is
tests/integration/test_agent_pin_unblock.py; here the pages and the JSON API in-process.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from openxpki_py.audit import verify_chain
from openxpki_py.db.schema import audit_log, audit_pending, token
from openxpki_py.personalization.tokens import TokenInfo, register_token
from openxpki_py.roles import RA_OPERATOR
from openxpki_py.web.app import create_app

from support.races import then_wait
from test_card_admin_credentials import _dump
from test_fuzz_inputs import _at_once
from test_console import Operator, operator_roles
from test_personalization_server import Agent, Browser, start

pytestmark = pytest.mark.usefixtures("pkcs11_session_leak_check")
CODE_RE = re.compile(r'<code id="enrollment-code">([A-Z0-9-]+)</code>')
PHRASE_RE = re.compile(r'<strong id="pairing-phrase">([a-z ]+)</strong>')


def _settings(settings: dict[str, Any]) -> None:
    operator_roles(settings)
    settings["card_admin"] = {"enabled": True, "unblock": {"per_card": 2, "per_user": 3}}


def _app(make_instance: Callable[..., Any], engine: Any) -> Any:
    inst = make_instance(engine, overrides=_settings)
    application = create_app(inst.config, inst.services)
    application.instance = inst  # type: ignore[attr-defined]
    return application


@pytest.fixture
def app(make_instance: Callable[..., Any], sqlite_engine: Any) -> Any:
    return _app(make_instance, sqlite_engine)


@pytest.fixture
def pg_app(make_instance: Callable[..., Any], pg_engine: Any) -> Any:
    return _app(make_instance, pg_engine)


def register(app: Any, serial: str, owner: str = "alice") -> None:
    with app.instance.services.db.begin() as conn:
        register_token(conn, TokenInfo(serial=serial), owner=owner, now=datetime.now(timezone.utc),
                       claim_lifetime=timedelta(days=1))


def ask(browser: Browser, serial: str) -> Any:
    """Press "Unblock the PIN of card …" on My certificates; the answer (a redirect)."""
    page = browser.get("/certificates").text
    return browser.post(f"/certificates/cards/{serial}/unblock", {"csrf_token": browser.csrf(page)})


def unblock_id(answer: Any) -> int:
    assert answer.status_code == 303 and "/unblock/" in answer.headers["Location"], answer.text
    return int(answer.headers["Location"].rsplit("/", 1)[1])


def paired_agent(app: Any, browser: Browser, wf_id: int) -> Agent:
    page = browser.get(f"/unblock/{wf_id}").text
    shown = browser.post(f"/unblock/{wf_id}/code", {"csrf_token": browser.csrf(page)}).text
    code = CODE_RE.search(shown)
    assert code and "openxpki-py-token unblock --server" in shown, shown
    agent = Agent(app)
    assert agent.enroll(code.group(1)).status_code == 200
    return agent


def confirm(browser: Browser, wf_id: int, phrase: str) -> None:
    page = browser.get(f"/unblock/{wf_id}").text
    shown = PHRASE_RE.search(page)
    assert shown and shown.group(1) == phrase, page
    version = re.search(r'name="version" value="(\d+)"', page)
    agent = re.search(r'name="agent" value="(\d+)"', page)
    assert version and agent
    done = browser.post(f"/unblock/{wf_id}/action", {"csrf_token": browser.csrf(page), "action": "confirm_card",
                                                     "version": version.group(1), "agent": agent.group(1)})
    assert done.status_code == 303, done.text


def confirmed_unblock(app: Any) -> tuple[int, Agent]:
    """alice's PIV card 55501234 registered, an unblock asked for, her agent paired and confirmed: (id, agent)."""
    register(app, "55501234")
    alice = Browser(app, "alice")
    wf_id = unblock_id(ask(alice, "55501234"))
    agent = paired_agent(app, alice, wf_id)
    assert agent.call("POST", "pin-unblock/card", {"serial": "55501234", "card_profile": "piv"}).status_code == 200
    confirm(alice, wf_id, agent.phrase)
    return wf_id, agent


def state(app: Any, wf_id: int) -> str:
    return str(app.instance.services.workflows.get(wf_id).state)


def audit(app: Any, event: str) -> list[Any]:
    with app.instance.services.db.connect() as conn:
        return list(conn.execute(select(audit_log).where(audit_log.c.event == event).order_by(audit_log.c.id))
                    .mappings())


def test_the_owners_agent_gets_the_puk_once_for_the_confirmed_card(app: Any) -> None:
    register(app, "55501234")
    alice = Browser(app, "alice")
    assert 'id="unblock-55501234"' in alice.get("/certificates").text
    wf_id = unblock_id(ask(alice, "55501234"))
    assert state(app, wf_id) == "WAIT_FOR_CARD"
    agent = paired_agent(app, alice, wf_id)

    other_card = agent.call("POST", "pin-unblock/card", {"serial": "55509999", "card_profile": "piv"})
    assert (other_card.status_code, other_card.json["error"]["code"]) == (409, "token.mismatch")
    reported = agent.call("POST", "pin-unblock/card", {"serial": "55501234", "card_profile": "piv"})
    assert reported.json == {"status": "awaiting_confirmation"}
    early = agent.call("POST", "pin-unblock/credential", {"token_serial": "55501234"})
    assert (early.status_code, early.json["error"]["code"]) == (403, "agent.unconfirmed")

    # An agent bound to another workflow (alice's own personalization) is not this unblock's agent.
    _, _, code = start(app)
    stranger = Agent(app)
    assert stranger.enroll(code).status_code == 200
    foreign = stranger.call("POST", "pin-unblock/credential", {"token_serial": "55501234"})
    assert (foreign.status_code, foreign.json["error"]["code"]) == (409, "workflow.type")
    assert Agent(app).call("POST", "pin-unblock/credential", {"token_serial": "55501234"}).status_code == 401

    confirm(alice, wf_id, agent.phrase)
    assert state(app, wf_id) == "UNBLOCKING"
    # The unblock's agent is no personalization's: the management key stays out of its reach.
    mgmt = agent.call("POST", "card-credentials", {"token_serial": "55501234"})
    assert (mgmt.status_code, mgmt.json["error"]["code"]) == (409, "workflow.type")
    assert agent.call("POST", "pin-unblock/card", {"serial": "55501234", "card_profile": "piv"}
                      ).json == {"status": "confirmed"}
    wrong = agent.call("POST", "pin-unblock/credential", {"token_serial": "55509999"})
    assert wrong.json["error"]["code"] == "token.mismatch"
    # A card suspended (or lost, or handed on) since the unblock started gets no PUK.
    for status in ("suspended", "active"):
        with app.instance.services.db.begin() as conn:
            conn.execute(token.update().where(token.c.serial == "55501234").values(status=status))
        if status == "suspended":
            inactive = agent.call("POST", "pin-unblock/credential", {"token_serial": "55501234"})
            assert (inactive.status_code, inactive.json["error"]["code"]) == (403, "unblock.card_inactive")
    answer = agent.call("POST", "pin-unblock/credential", {"token_serial": "55501234"})
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    puk = app.instance.services.card_admin.card_admin_credentials("piv", "55501234").values["puk"]
    # The PUK only: the management key (which replaces keys and certificates) is not an unblock's business.
    assert answer.json == {"card_type": "piv", "serial": "55501234", "credentials": {"puk": puk}}
    again = agent.call("POST", "pin-unblock/credential", {"token_serial": "55501234"})
    assert (again.status_code, again.json["error"]["code"]) == (403, "unblock.credential_used")

    done = agent.call("POST", "pin-unblock/result", {"token_serial": "55501234", "outcome": "unblocked"})
    assert done.json == {"state": "UNBLOCKED"}
    assert "has the new PIN" in alice.get(f"/unblock/{wf_id}").text
    after = agent.call("POST", "pin-unblock/card", {"serial": "55501234", "card_profile": "piv"})
    assert after.json["error"]["code"] == "auth.token_expired"  # the session ended with the result

    rows = audit(app, "card.unblock_credential")
    assert [r["outcome"] for r in rows if r["outcome"] == "ok"] == ["ok"]
    ok = next(r for r in rows if r["outcome"] == "ok")
    assert ok["actor"] == "alice" and ok["details"] == {"card": "55501234", "card_type": "piv", "kinds": ["puk"]}
    assert sorted(r["details"]["code"] for r in rows if r["outcome"] == "refused") == [
        "agent.unconfirmed", "token.mismatch", "unblock.card_inactive", "unblock.credential_used", "workflow.type"]
    assert puk not in _dump(app) and json.dumps({"puk": puk}) not in _dump(app)


def test_credential_calls_at_once_release_the_puk_once_on_postgresql(pg_app: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Count and record are one step: three calls at once, one PUK, every call audited and chained."""
    from openxpki_py.unblock import agent_calls

    _, agent = confirmed_unblock(pg_app)
    # Make the race certain: each call, having counted, waits for the others to have counted too (or 3 s).
    monkeypatch.setattr(agent_calls, "count_audit", then_wait(agent_calls.count_audit, threading.Barrier(3, timeout=3)))

    def credential() -> Any:
        return agent.twin().call(  # a client per thread, the same agent credential
            "POST", "pin-unblock/credential", {"token_serial": "55501234"})
    answers = _at_once(3, credential)
    assert sorted(a.status_code for a in answers) == [200, 403, 403], [a.json for a in answers]
    assert {a.json["error"]["code"] for a in answers if a.status_code == 403} == {"unblock.credential_used"}
    rows = audit(pg_app, "card.unblock_credential")  # each call chained its row before it answered
    assert sorted(r["outcome"] for r in rows) == ["ok", "refused", "refused"]
    with pg_app.instance.services.db.connect() as conn:
        assert conn.execute(select(audit_pending)).first() is None
        assert verify_chain(conn).ok


def test_refused_for_another_users_card_an_unknown_or_inactive_card(app: Any) -> None:
    register(app, "BOB0001", owner="bob")
    register(app, "ALICE02")
    alice = Browser(app, "alice")
    for serial, code in (("BOB0001", "unblock.card_unknown"), ("NOSUCH1", "unblock.card_unknown")):
        refused = ask(alice, serial)
        assert refused.status_code == 303 and refused.headers["Location"].endswith("/certificates"), refused.text
        page = alice.get("/certificates").text
        assert f"card {serial} cannot be unblocked here" in page and "registered to you" in page, page
    with app.instance.services.db.begin() as conn:
        conn.execute(token.update().where(token.c.serial == "ALICE02").values(status="suspended"))
    ask(alice, "ALICE02")
    assert "is suspended: only an active card" in alice.get("/certificates").text
    failed = [r for r in audit(app, "workflow.action") if r["outcome"] == "failed"]
    assert [r["details"]["error"] for r in failed] == ["unblock.card_unknown", "unblock.card_unknown",
                                                       "unblock.card_inactive"]
    # Without the CSRF token nothing starts.
    assert alice.post("/certificates/cards/ALICE02/unblock", {}).status_code in (400, 403)


def cancel(browser: Browser, wf_id: int) -> None:
    page = browser.get(f"/unblock/{wf_id}").text
    version = re.search(r'name="version" value="(\d+)"', page)
    assert version
    done = browser.post(f"/unblock/{wf_id}/action", {"csrf_token": browser.csrf(page), "action": "cancel",
                                                     "version": version.group(1)})
    assert done.status_code == 303 and state(browser.client.application, wf_id) == "CANCELLED"


def test_rate_limits_per_card_and_per_owner(app: Any) -> None:
    register(app, "55501234")
    alice = Browser(app, "alice")
    for _ in range(2):
        cancel(alice, unblock_id(ask(alice, "55501234")))
    ask(alice, "55501234")
    assert "card 55501234 had 2 PIN unblock(s) in the last 24 h already" in alice.get("/certificates").text
    # Per owner: a third unblock of alice's on another card is still allowed, the fourth is not.
    register(app, "55505678")
    cancel(alice, unblock_id(ask(alice, "55505678")))
    ask(alice, "55505678")
    assert "alice's cards had 3 PIN unblock(s)" in html.unescape(alice.get("/certificates").text)


def test_an_operator_starts_it_and_only_the_owner_runs_it(app: Any) -> None:
    register(app, "55501234")
    bob = Operator(app, "bob").choose(RA_OPERATOR)
    card_page = bob.get("/console/cards/55501234").get_data(as_text=True)
    assert 'id="start-unblock"' in card_page
    started = bob.post("/console/cards/55501234/unblock", {"reason": "ticket 4711"},
                       headers={"Accept": "application/json"})
    assert started.status_code == 200, started.get_data(as_text=True)
    wf_id = started.json["result"]["workflow_id"]  # type: ignore[index]
    view = app.instance.services.workflows.get(wf_id)
    assert (view.state, view.creator, view.context["owner"]) == ("WAIT_FOR_CARD", "bob", "alice")
    # Bob cannot get the owner's code; alice sees the unblock on her page and runs it.
    assert bob.get(f"/unblock/{wf_id}").status_code == 403
    alice = Browser(app, "alice")
    mine = alice.get("/certificates").text
    assert f"/unblock/{wf_id}" in mine and "started by the help desk (bob)" in mine
    agent = paired_agent(app, alice, wf_id)
    assert agent.call("POST", "pin-unblock/card", {"serial": "55501234", "card_profile": "piv"}).status_code == 200
    # A generic token has no unblock credential here: said at once, not after the user confirmed.
    register(app, "SOFT0001")
    soft = unblock_id(ask(alice, "SOFT0001"))
    soft_agent = paired_agent(app, alice, soft)
    refused = soft_agent.call("POST", "pin-unblock/card", {"serial": "SOFT0001"})
    assert refused.json["error"]["code"] == "unblock.card_unsupported", refused.json
    assert "cannot be unblocked by the help desk" in refused.json["error"]["message"]


@pytest.mark.parametrize("second_card", [False, True], ids=["same card", "another card of the owner"])
def test_two_unblocks_checked_at_once_cannot_both_pass_the_last_allowed_one(
        pg_app: Any, monkeypatch: pytest.MonkeyPatch, second_card: bool) -> None:
    """The rate limit is a count then a record; two checks at once used to both count the same past (PostgreSQL)."""
    from openxpki_py.unblock import activities

    register(pg_app, "55501234")
    alice = Browser(pg_app, "alice")
    if second_card:  # per owner: 3 allowed, 1 used on each card (2 per card allowed): one left for the two
        register(pg_app, "55505678")
        for serial in ("55501234", "55505678"):
            cancel(alice, unblock_id(ask(alice, serial)))
        serials = ["55501234", "55505678"]
    else:  # per card: 2 allowed, 1 used
        cancel(alice, unblock_id(ask(alice, "55501234")))
        serials = ["55501234", "55501234"]
    # Make the race certain: each check, having counted, waits for the other to have counted too (or 3 s).
    limit = "owner" if second_card else "token_serial"
    monkeypatch.setattr(activities, "recent_unblocks", then_wait(
        activities.recent_unblocks, threading.Barrier(2, timeout=3), when=lambda conn, key, *_a, **_k: key == limit))
    answers: list[Any] = [None, None]
    browsers = [Browser(pg_app, "alice"), Browser(pg_app, "alice")]  # two tabs, two sessions

    def start(i: int) -> None:
        answers[i] = ask(browsers[i], serials[i])

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    started = [i for i, a in enumerate(answers)
               if a is not None and a.status_code == 303 and "/unblock/" in a.headers["Location"]]
    assert len(started) == 1, [(a.status_code, a.headers.get("Location")) for a in answers if a is not None]
    page = html.unescape(browsers[1 - started[0]].get("/certificates").text)
    assert ("alice's cards had 3 PIN unblock(s)" if second_card else "card 55501234 had 2 PIN unblock(s)") in page


def test_asking_about_someone_elses_card_locks_none_of_their_cards(pg_app: Any) -> None:
    """A User's request for a card not theirs is refused as unknown; it must not first queue on (or hold) the
    owner's card rows: no lock contention a stranger can cause, no timing signal (review finding)."""
    register(pg_app, "55501234", owner="bob")
    db = pg_app.instance.services.db
    release, answered = threading.Event(), threading.Event()

    def bobs_card_busy() -> None:
        with db.begin() as conn:  # e.g. a help-desk transition on bob's card, taking its time
            conn.execute(select(token.c.id).where(token.c.owner == "bob").with_for_update()).all()
            release.wait(20)

    holder = threading.Thread(target=bobs_card_busy)
    holder.start()
    answers: list[Any] = []
    alice = Browser(pg_app, "alice")
    asker = threading.Thread(target=lambda: (answers.append(ask(alice, "55501234")), answered.set()))
    try:
        asker.start()
        assert answered.wait(10), "alice's request waited for bob's card rows"
    finally:
        release.set()
        holder.join(30)
        asker.join(30)
    assert answers and answers[0].status_code == 303, answers
    assert "no card 55501234 is registered to you" in html.unescape(alice.get("/certificates").text)


def test_an_unblock_cancelled_meanwhile_releases_no_puk_on_postgresql(pg_app: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The state under the workflow's lock decides, not the view read before it (review finding)."""
    from openxpki_py.db.schema import workflow
    from openxpki_py.unblock import agent_calls

    wf_id, agent = confirmed_unblock(pg_app)
    read = agent_calls.PinUnblockCalls._view

    def read_then_cancel(self: Any, credential: Any) -> Any:
        view = read(self, credential)  # still UNBLOCKING
        with pg_app.instance.services.db.begin() as other:  # meanwhile alice cancels on the page (committed)
            other.execute(workflow.update().where(workflow.c.id == wf_id)
                          .values(state="CANCELLED", proc_state="finished"))
        return view
    monkeypatch.setattr(agent_calls.PinUnblockCalls, "_view", read_then_cancel)
    answer = agent.call("POST", "pin-unblock/credential", {"token_serial": "55501234"})
    assert answer.status_code == 409 and answer.json["error"]["code"] == "unblock.state", answer.json
    assert [r["outcome"] for r in audit(pg_app, "card.unblock_credential")] == ["refused"]


def test_a_card_that_changes_hands_during_the_check_is_counted_under_its_new_owners_lock(pg_app: Any) -> None:
    """The owner is read before the lock: if the card changes hands in between, the new owner's cards are locked
    (else the new owner's per-user limit would be counted unlocked) (review finding)."""
    from sqlalchemy.exc import OperationalError

    from openxpki_py.unblock.activities import _owners_cards_locked

    register(pg_app, "55501234", owner="alice")
    register(pg_app, "55505678", owner="bob")
    db = pg_app.instance.services.db

    class ReassignAfterFirstRead:
        """The check's connection; right after its first read the help desk gives the card to bob (committed)."""

        def __init__(self, conn: Any) -> None:
            self.conn, self.reads = conn, 0

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            result = self.conn.execute(*args, **kwargs)
            self.reads += 1
            if self.reads == 1:
                with db.begin() as desk:
                    desk.execute(token.update().where(token.c.serial == "55501234").values(owner="bob"))
            return result

    with db.begin() as conn:
        card = _owners_cards_locked(ReassignAfterFirstRead(conn), "55501234")  # type: ignore[arg-type]
        assert card is not None and card.owner == "bob"
        with db.connect() as other:  # bob's other card is locked by the check now
            other.exec_driver_sql("SET lock_timeout = '200ms'")
            with pytest.raises(OperationalError, match="lock timeout"):
                other.execute(select(token.c.id).where(token.c.serial == "55505678").with_for_update()).all()
