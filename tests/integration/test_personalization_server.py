"""The personalization's server side in-process: pages, JSON API, workflow,
CA with its key in SoftHSM, LDIF directory, SQLite and PostgreSQL.

The agent is played by plain HTTP calls with software keys here; the real
agent against a real card, through Apache and a browser, is
tests/e2e/test_personalization_e2e.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from openxpki_py_token.pairing import new_agent_key, public_key_text
from sqlalchemy import func, select, update
from werkzeug.test import Client

from openxpki_py.db.schema import audit_log, certificate, enrollment_code, token
from openxpki_py.web.app import create_app

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
CODE_RE = re.compile(r'<code id="enrollment-code">([A-Z0-9-]+)</code>')
AGENT_RE = re.compile(r'name="agent" value="(\d+)"')
PHRASE_RE = re.compile(r'<strong id="pairing-phrase">([a-z ]+)</strong>')
# The card report's answer: the agent waits for the user, the same task GET /task answers then.
CONFIRM_WAIT = {"task": "wait", "reason": "confirm the card in your browser", "retry_after": 1}
AWAITING = {"status": "awaiting_confirmation", "next_task": CONFIRM_WAIT}


class Browser:
    """A user's browser behind SSO: every request carries REMOTE_USER."""

    def __init__(self, app: Any, login: str) -> None:
        self.client = Client(app)
        self.env = {"REMOTE_USER": login}

    def get(self, path: str) -> Any:
        return self.client.get(path, environ_overrides=self.env)

    def post(self, path: str, data: dict[str, Any]) -> Any:
        return self.client.post(path, data=data, environ_overrides=self.env)

    def csrf(self, page: str) -> str:
        match = CSRF_RE.search(page)
        assert match, page
        return match.group(1)


class Agent:
    """The token agent's HTTP side, without a card."""

    def __init__(self, app: Any, env: dict[str, str] | None = None) -> None:
        self.client = Client(app)
        self.env = env or {}
        self.access_token = ""
        self.phrase = ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}
        return self.client.open(f"/api/v1/{path}", method=method, json=body, headers=headers,
                                environ_overrides=self.env)

    def twin(self) -> Agent:
        """Another client with this agent's credential: the same agent calling from a second thread."""
        other = Agent(self.client.application, self.env)
        other.access_token, other.phrase = self.access_token, self.phrase
        return other

    def enroll(self, code: str) -> Any:
        response = self.call("POST", "enroll", {"code": code, "agent_key": public_key_text(new_agent_key())})
        if response.status_code == 200:
            self.access_token = response.json["access_token"]
            self.phrase = response.json["pairing_phrase"]
        return response


def make_csr(key: Any) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "card")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def start(app: Any, login: str = "alice") -> tuple[Browser, int, str]:
    browser = Browser(app, login)
    response = browser.get("/deeplink")
    assert response.status_code == 303, response.text
    page_path = response.headers["Location"]
    wf_id = int(page_path.rsplit("/", 1)[1])
    page = browser.get(page_path).text
    assert "Show enrollment code" in page and 'class="menu"' not in page
    shown = browser.post(f"/personalize/{wf_id}/code", {"csrf_token": browser.csrf(page), "mode": "deeplink"})
    code = CODE_RE.search(shown.text)
    assert code, shown.text
    assert f"--code {code.group(1)}" in shown.text
    return browser, wf_id, code.group(1)


def page_action(browser: Browser, wf_id: int, action: str, *, version_offset: int = 0) -> Any:
    """Press one of the page's buttons (as the page was just loaded, or ``version_offset`` older)."""
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    version = re.search(r'name="version" value="(\d+)"', page)
    assert version, page
    agent = AGENT_RE.search(page)  # the agent whose pairing phrase the page shows
    return browser.post(f"/personalize/{wf_id}/action", {
        "csrf_token": browser.csrf(page), "mode": "deeplink", "action": action,
        "version": str(int(version.group(1)) + version_offset), **({"agent": agent.group(1)} if agent else {})})


def confirm(browser: Browser, wf_id: int) -> None:
    assert "Is this your card?" in browser.get(f"/deeplink/workflow/{wf_id}").text
    done = page_action(browser, wf_id, "confirm_token")
    assert done.status_code == 303, done.text


def confirmed_agent(app: Any, serial: str, login: str = "alice") -> tuple[Browser, int, Agent]:
    """A personalization whose agent reported ``serial`` and whose user confirmed it."""
    browser, wf_id, code = start(app, login)
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    assert agent.call("POST", "token", {"serial": serial}).status_code == 200
    confirm(browser, wf_id)
    return browser, wf_id, agent


def count(inst: Any, table: Any) -> int:
    with inst.services.db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def app(make_instance: Callable[..., Any], db_engine: Any) -> Any:
    inst = make_instance(db_engine)
    application = create_app(inst.config, inst.services)
    application.instance = inst  # type: ignore[attr-defined]
    return application


def test_two_certificates_for_alice(app: Any) -> None:
    browser, wf_id, code = start(app)
    agent = Agent(app)
    assert agent.enroll(code).json["user"] == "alice"
    assert agent.call("POST", "token", {"serial": "CARD0001", "model": "SoftHSM v2", "manufacturer": "SoftHSM"}
                      ).json == AWAITING
    assert agent.call("GET", "task").json == CONFIRM_WAIT
    assert "CARD0001" in browser.get(f"/deeplink/workflow/{wf_id}").text
    confirm(browser, wf_id)

    serials = []
    for index, cert_type in ((1, "authentication"), (2, "encryption")):
        task = agent.call("GET", "task").json
        assert task["task"] == "generate_key" and task["cert_type"] == cert_type
        assert (task["index"], task["count"], task["key"]) == (index, 2, {"algorithm": "rsa", "size": 2048})
        csr = make_csr(rsa.generate_private_key(65537, 2048))
        answer = agent.call("POST", "csr", {"cert_type": cert_type, "key_id": task["key_id"], "csr": csr})
        assert answer.status_code == 200 and answer.json["status"] == "issued", answer.json
        again = agent.call("POST", "csr", {"cert_type": cert_type, "key_id": task["key_id"], "csr": csr})
        assert again.json == answer.json  # idempotent: a retried post issues nothing new
        install = agent.call("GET", "task").json
        assert install["task"] == "install_certificate" and install["serial"] == answer.json["serial"]
        assert answer.json["next_task"] == install  # the answer carries what GET /task says
        cert = x509.load_pem_x509_certificate(install["certificate"].encode())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "Alice Example"
        receipt = {"cert_type": cert_type, "key_id": install["key_id"], "serial": install["serial"]}
        installed = agent.call("POST", "receipt", receipt).json
        assert installed["status"] == "installed"
        assert agent.call("POST", "receipt", receipt).json == installed  # a repeat: the same answer
        assert installed["next_task"] == agent.call("GET", "task").json
        assert installed["next_task"]["task"] == ("generate_key" if index == 1 else "done")
        serials.append(install["serial"])

    done = agent.call("GET", "task").json
    assert done["task"] == "done" and [c["serial"] for c in done["certificates"]] == serials
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "Your card is ready." in page and all(s in page for s in serials)
    assert count(app.instance, certificate) == 2
    with app.instance.services.db.connect() as conn:
        token_ids = {r.token_id for r in conn.execute(select(certificate.c.token_id))}
    assert len(token_ids) == 1 and None not in token_ids
    pem = browser.get(f"/personalize/{wf_id}/certificate/{serials[0]}.pem")
    assert pem.status_code == 200 and b"BEGIN CERTIFICATE" in pem.data
    # history shows the forked children
    children = app.instance.services.workflows.children(wf_id)
    assert [c.wf_type for c in children] == ["certificate_issuance"] * 2
    assert all(c.state == "ISSUED" for c in children)


def test_refusals(app: Any) -> None:
    inst = app.instance
    browser, wf_id, code = start(app)

    bob_agent = Agent(app, env={"REMOTE_USER": "bob"})
    refused = bob_agent.enroll(code)
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "enroll.wrong_user")
    garbage = Agent(app).enroll("AAAAA-BBBBB-CCCCC-DDDDD-E")
    assert (garbage.status_code, garbage.json["error"]["code"]) == (401, "enroll.code_invalid")

    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    reused = Agent(app).enroll(code)
    assert (reused.status_code, reused.json["error"]["code"]) == (409, "enroll.code_used")

    with inst.services.db.begin() as conn:  # bob's card
        now = datetime.now(timezone.utc)
        conn.execute(token.insert(), {"serial": "BOBCARD", "owner": "bob", "status": "active",
                                      "first_seen": now, "last_seen": now})
        conn.execute(token.insert(), {"serial": "LOSTCARD", "owner": "alice", "status": "lost",
                                      "first_seen": now, "last_seen": now})
    owned = agent.call("POST", "token", {"serial": "BOBCARD"})
    assert (owned.status_code, owned.json["error"]["code"]) == (403, "token.owned_by_other")
    lost = agent.call("POST", "token", {"serial": "LOSTCARD"})
    assert (lost.status_code, lost.json["error"]["code"]) == (403, "token.unusable")
    assert "marked lost" in lost.json["error"]["message"]

    agent.call("POST", "token", {"serial": "ALICECARD"})
    early = agent.call("POST", "csr", {"cert_type": "authentication", "key_id": "01",
                                       "csr": make_csr(rsa.generate_private_key(65537, 2048))})
    assert (early.status_code, early.json["error"]["code"]) == (403, "agent.unconfirmed")  # nothing before the browser says yes
    confirm(browser, wf_id)

    mismatch = agent.call("POST", "csr", {"cert_type": "authentication", "key_id": "01",
                                          "csr": make_csr(ec.generate_private_key(ec.SECP256R1()))})
    assert (mismatch.status_code, mismatch.json["error"]["code"]) == (422, "csr.key_mismatch")
    assert "EC P-256 key but RSA-2048 was requested" in mismatch.json["error"]["message"]

    good = x509.load_pem_x509_csr(make_csr(rsa.generate_private_key(65537, 2048)).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    bad_sig = agent.call("POST", "csr", {"cert_type": "authentication", "key_id": "01", "csr": forged})
    assert (bad_sig.status_code, bad_sig.json["error"]["code"]) == (422, "csr.signature")

    other_card = agent.call("POST", "token", {"serial": "OTHERCARD"})
    assert (other_card.status_code, other_card.json["error"]["code"]) == (409, "token.mismatch")
    assert count(inst, certificate) == 0
    assert agent.call("GET", "task").json["task"] == "generate_key"  # nothing lost: the step is still open


def test_expired_code_and_rate_limit(app: Any) -> None:
    inst = app.instance
    _, wf_id, code = start(app)
    with inst.services.db.begin() as conn:
        conn.execute(update(enrollment_code).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    expired = Agent(app).enroll(code)
    assert (expired.status_code, expired.json["error"]["code"]) == (401, "enroll.code_expired")
    limit = inst.config.personalization.enrollment.max_failures
    for _ in range(limit):
        Agent(app).enroll("WRONG-WRONG-WRONG")
    limited = Agent(app).enroll("WRONG-WRONG-WRONG")
    assert (limited.status_code, limited.json["error"]["code"]) == (429, "enroll.rate_limited")
    assert limited.headers["Retry-After"]


def test_deep_link_resumes_and_menu_mode(app: Any) -> None:
    browser, wf_id, _ = start(app)
    again = browser.get("/deeplink")
    assert again.headers["Location"].endswith(f"/deeplink/workflow/{wf_id}")  # resumed, not a second one
    menu = browser.get("/personalize")
    assert menu.headers["Location"].endswith(f"/personalize/{wf_id}")
    page = browser.get(f"/personalize/{wf_id}").text
    assert 'class="menu"' in page and "Personalize your smartcard" in page
    assert Browser(app, "bob").get(f"/personalize/{wf_id}").status_code == 404  # not bob's to see
    no_csrf = browser.post(f"/personalize/{wf_id}/code", {"mode": "menu"})
    assert no_csrf.status_code == 403


def _personalize_fully(app: Any, serial: str) -> tuple[Browser, int, list[str]]:
    browser, wf_id, agent = confirmed_agent(app, serial)
    serials = []
    while (task := agent.call("GET", "task").json)["task"] != "done":
        if task["task"] == "generate_key":
            key = (rsa.generate_private_key(65537, task["key"]["size"]) if task["key"]["algorithm"] == "rsa"
                   else ec.generate_private_key(ec.SECP256R1()))
            answer = agent.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"],
                                                "csr": make_csr(key)})
            assert answer.status_code == 200, answer.json
        elif task["task"] == "install_certificate":
            agent.call("POST", "receipt", {"cert_type": task["cert_type"], "serial": task["serial"]})
            serials.append(task["serial"])
        else:
            raise AssertionError(task)
    return browser, wf_id, serials


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_cancel_from_the_page(app: Any) -> None:
    browser, wf_id, code = start(app)
    agent = Agent(app)
    agent.enroll(code)
    agent.call("POST", "token", {"serial": "CARD-CANCEL"})
    stale = page_action(browser, wf_id, "cancel", version_offset=-1)
    assert stale.status_code == 409  # decided on an old page: reload first
    done = page_action(browser, wf_id, "cancel")
    assert done.status_code == 303
    task = agent.call("GET", "task").json
    assert task == {"task": "failed", "code": "personalization.cancelled", "message": "cancelled by the user"}
    assert "cancelled by the user" in browser.get(f"/deeplink/workflow/{wf_id}").text
    assert count(app.instance, certificate) == 0


@pytest.fixture
def keep_app(make_instance: Callable[..., Any], sqlite_engine: Any) -> Any:
    def keep_logon(settings: dict[str, Any]) -> None:
        settings["personalization"] = {"certificates": [
            {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01",
             "keep_valid_days": 30},
            {"type": "encryption", "profile": "encryption", "key": "ec-p256", "key_id": "02", "usage": "decrypt"},
        ]}
    inst = make_instance(sqlite_engine, overrides=keep_logon)
    application = create_app(inst.config, inst.services)
    application.instance = inst  # type: ignore[attr-defined]
    return application


def test_still_valid_certificate_on_the_card_is_kept(keep_app: Any) -> None:
    inst = keep_app.instance
    _, _, first = _personalize_fully(keep_app, "KEEPCARD")
    assert len(first) == 2 and count(inst, certificate) == 2

    # Second run on the same card: the logon certificate is kept, only encryption (EC) is issued.
    browser, wf_id, agent = confirmed_agent(keep_app, "KEEPCARD")
    task = agent.call("GET", "task").json
    assert (task["cert_type"], task["index"], task["count"], task["key"]) == (
        "encryption", 1, 1, {"algorithm": "ec", "curve": "P-256"})
    answer = agent.call("POST", "csr", {"cert_type": "encryption", "key_id": "02",
                                        "csr": make_csr(ec.generate_private_key(ec.SECP256R1()))})
    assert answer.status_code == 200, answer.json
    install = agent.call("GET", "task").json
    agent.call("POST", "receipt", {"cert_type": "encryption", "serial": install["serial"]})
    done = agent.call("GET", "task").json
    assert [(c["cert_type"], c["status"]) for c in done["certificates"]] == [
        ("authentication", "kept"), ("encryption", "installed")]
    assert count(inst, certificate) == 3  # the kept logon certificate was not issued again
    assert done["certificates"][0]["serial"] == first[0]
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "authentication (kept)" in page


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_reported_card_is_claimed_only_when_confirmed(app: Any) -> None:
    inst = app.instance
    bob_browser, bob_wf, bob_code = start(app, "bob")
    bob = Agent(app)
    bob.enroll(bob_code)
    assert bob.call("POST", "token", {"serial": "ALICECARD"}).json == AWAITING
    assert page_action(bob_browser, bob_wf, "reject_token").status_code == 303
    rejected = bob.call("GET", "task")  # the agent that reported a card the user rejected is out
    assert (rejected.status_code, rejected.json["error"]["code"]) == (401, "auth.token_expired")
    assert count(inst, token) == 0  # merely reported: nobody's card

    confirmed_agent(app, "ALICECARD")
    with inst.services.db.connect() as conn:
        assert [(r.serial, r.owner) for r in conn.execute(select(token.c.serial, token.c.owner))] == [
            ("ALICECARD", "alice")]


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_new_code_replaces_a_stopped_agent(app: Any) -> None:
    browser, wf_id, code = start(app)
    first = Agent(app)
    first.enroll(code)
    first.call("POST", "token", {"serial": "CARD-A"})
    confirm(browser, wf_id)
    task = first.call("GET", "task").json
    key = rsa.generate_private_key(65537, 2048)
    first.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"], "csr": make_csr(key)})

    # the agent stops; the page offers a new code while the card still has work to do
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "Get a new code for the agent" in page
    shown = browser.post(f"/personalize/{wf_id}/code", {"csrf_token": browser.csrf(page), "mode": "deeplink"})
    new_code = CODE_RE.search(shown.text)
    assert new_code
    old = first.call("GET", "task")
    assert (old.status_code, old.json["error"]["code"]) == (401, "auth.token_expired")

    second = Agent(app)
    second.enroll(new_code.group(1))
    swapped = second.call("POST", "token", {"serial": "CARD-B"})
    assert (swapped.status_code, swapped.json["error"]["code"]) == (409, "token.mismatch")
    # A new code after the card was confirmed: the new agent waits for the user, like the first one did.
    reported = second.call("POST", "token", {"serial": "CARD-A"}).json
    waiting = second.call("GET", "task").json
    assert waiting["task"] == "wait" and second.phrase in waiting["reason"]
    assert reported == {"status": "awaiting_confirmation", "next_task": waiting}
    early = second.call("POST", "receipt", {"cert_type": "authentication", "serial": "01"})
    assert (early.status_code, early.json["error"]["code"]) == (403, "agent.unconfirmed")
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    shown_phrase = PHRASE_RE.search(page)
    assert shown_phrase and shown_phrase.group(1) == second.phrase != first.phrase
    assert page_action(browser, wf_id, "confirm_agent").status_code == 303
    assert PHRASE_RE.search(browser.get(f"/deeplink/workflow/{wf_id}").text) is None  # nothing left to ask
    reported = second.call("POST", "token", {"serial": "CARD-A"}).json
    install = second.call("GET", "task").json
    assert install["task"] == "install_certificate" and install["cert_type"] == "authentication"
    assert reported == {"status": "confirmed", "next_task": install}  # a rerun goes on without asking
    second.call("POST", "receipt", {"cert_type": "authentication", "serial": install["serial"]})
    reuse = second.call("POST", "csr", {"cert_type": "encryption", "key_id": "02", "csr": make_csr(key)})
    assert (reuse.status_code, reuse.json["error"]["code"]) == (422, "csr.key_reused")
    assert count(app.instance, certificate) == 1


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_cancel_revokes_an_uninstalled_certificate_and_reissue_supersedes(app: Any) -> None:
    inst = app.instance
    browser, wf_id, agent = confirmed_agent(app, "CARD-X")
    task = agent.call("GET", "task").json
    agent.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"],
                               "csr": make_csr(rsa.generate_private_key(65537, 2048))})
    assert page_action(browser, wf_id, "cancel").status_code == 303
    with inst.services.db.connect() as conn:
        rows = conn.execute(select(certificate.c.status, certificate.c.revocation_reason)).all()
    assert [tuple(r) for r in rows] == [("revoked", "cessationOfOperation")]

    _, _, first = _personalize_fully(app, "CARD-X")
    _, _, second = _personalize_fully(app, "CARD-X")
    with inst.services.db.connect() as conn:
        status = {r.serial: (r.status, r.revocation_reason)
                  for r in conn.execute(select(certificate.c.serial, certificate.c.status,
                                               certificate.c.revocation_reason))}
    assert all(status[s] == ("revoked", "superseded") for s in first)
    assert all(status[s] == ("valid", None) for s in second)


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_only_wrong_codes_count_and_bad_json_is_a_clear_error(app: Any) -> None:
    _, _, code = start(app)
    assert Agent(app).enroll(code).status_code == 200
    limit = app.instance.config.personalization.enrollment.max_failures
    for _ in range(limit + 2):  # a rerun agent's "already used" is no guess
        assert Agent(app).enroll(code).json["error"]["code"] == "enroll.code_used"
    deep = Client(app).post("/api/v1/enroll", data="[" * 60000, content_type="application/json")
    assert (deep.status_code, deep.json["error"]["code"]) == (400, "request.invalid")


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_help_desk_marks_a_card_lost_and_releases_it(app: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    inst = app.instance
    _, _, serials = _personalize_fully(app, "CARD-LOST")
    cli = [str(Path(sys.executable).parent / "openxpki-py"), "--config", str(inst.config_path), "token"]
    listed = subprocess.run(cli + ["list", "--owner", "alice"], capture_output=True, text=True, check=True)
    assert "CARD-LOST" in listed.stdout and "active" in listed.stdout
    lost = subprocess.run(cli + ["status", "CARD-LOST", "lost"], capture_output=True, text=True, check=False)
    assert lost.returncode == 0, lost.stderr
    assert "revoked 2 certificate(s)" in lost.stdout
    with inst.services.db.connect() as conn:
        reasons = {r.serial: r.revocation_reason
                   for r in conn.execute(select(certificate.c.serial, certificate.c.revocation_reason))}
    assert all(reasons[s] == "keyCompromise" for s in serials)
    browser, wf_id, code = start(app)
    agent = Agent(app)
    agent.enroll(code)
    refused = agent.call("POST", "token", {"serial": "CARD-LOST"})
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "token.unusable")

    unknown = subprocess.run(cli + ["status", "NO-SUCH-CARD", "lost"], capture_output=True, text=True, check=False)
    assert unknown.returncode == 6 and "no card with serial NO-SUCH-CARD is registered" in unknown.stderr
    # A lost card's certificates stay revoked: it cannot simply be "active" again ...
    resumed = subprocess.run(cli + ["status", "CARD-LOST", "active"], capture_output=True, text=True, check=False)
    assert resumed.returncode != 0 and "token.transition_state" in resumed.stderr
    # ... but the help desk can release it as a blank card for the next user.
    assert subprocess.run(cli + ["release", "CARD-LOST"], capture_output=True, text=True, check=False).returncode == 0
    bob_browser, bob_wf, bob_code = start(app, "bob")
    bob = Agent(app)
    bob.enroll(bob_code)
    assert bob.call("POST", "token", {"serial": "CARD-LOST"}).json == AWAITING


def test_agent_command_uses_the_configured_public_url(make_instance: Callable[..., Any], sqlite_engine: Any) -> None:
    def behind_proxy(settings: dict[str, Any]) -> None:
        settings["web"]["public_url"] = "https://pki.example.com/openxpki/"
    inst = make_instance(sqlite_engine, overrides=behind_proxy)
    application = create_app(inst.config, inst.services)
    _, _, code = start(application)
    browser = Browser(application, "alice")
    wf_id = int(browser.get("/deeplink").headers["Location"].rsplit("/", 1)[1])
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    shown = browser.post(f"/personalize/{wf_id}/code", {"csrf_token": browser.csrf(page), "mode": "deeplink"})
    assert "openxpki-py-token enroll --server https://pki.example.com/openxpki --code " in shown.text
    assert "--insecure-http-for-localhost" not in shown.text


@pytest.fixture
def approval_app(make_instance: Callable[..., Any], sqlite_engine: Any, tmp_path: Any) -> Any:
    """The encryption profile needs an RA Operator's approval."""
    import yaml

    from openxpki_py.crypto.profiles import BUILTIN_DIR

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    data = yaml.safe_load((BUILTIN_DIR / "encryption.yaml").read_text())
    data["approval"] = {"required": 1}
    (profiles / "encryption.yaml").write_text(yaml.safe_dump(data))

    def with_profiles(settings: dict[str, Any]) -> None:
        settings["ca"]["profiles_dir"] = str(profiles)
        settings["auth"]["roles"]["RA Operator"] = {"command": ["/bin/true"], "users": ["bob", "carol"]}
    inst = make_instance(sqlite_engine, overrides=with_profiles)
    application = create_app(inst.config, inst.services)
    application.instance = inst  # type: ignore[attr-defined]
    return application


def _up_to_approval(app: Any) -> tuple[Browser, int, Agent, int]:
    browser, wf_id, agent = confirmed_agent(app, "CARD-APPROVAL")
    for _ in range(2):
        task = agent.call("GET", "task").json
        answer = agent.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"],
                                            "csr": make_csr(rsa.generate_private_key(65537, 2048))})
        if task["cert_type"] == "authentication":
            install = agent.call("GET", "task").json
            agent.call("POST", "receipt", {"cert_type": "authentication", "serial": install["serial"]})
    waiting = {"task": "wait", "reason": "waiting for approval by an RA Operator", "retry_after": 2}
    assert (answer.status_code, answer.json) == (202, {"status": "pending",
                                                       "reason": "waiting for approval by an RA Operator",
                                                       "next_task": waiting})  # the agent still polls
    assert agent.call("GET", "task").json == waiting
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "Waiting for approval by an RA Operator." in page and 'id="withdraw"' in page
    child = app.instance.services.workflows.children(wf_id)[-1]
    assert child.state == "PENDING_APPROVAL"
    return browser, wf_id, agent, child.id


def test_approval_by_an_ra_operator_lets_the_card_continue(approval_app: Any) -> None:
    browser, wf_id, agent, child_id = _up_to_approval(approval_app)
    engine = approval_app.instance.services.workflows
    from openxpki_py.workflow.errors import ActivityFailed

    with pytest.raises(ActivityFailed, match="only the requester may withdraw"):
        engine.execute(child_id, "withdraw", actor="bob", role="User")
    engine.execute(child_id, "approve", actor="bob", role="RA Operator", inputs={"comment": "ok"})
    install = agent.call("GET", "task").json  # the parent woke with the child, no worker needed
    assert install["task"] == "install_certificate" and install["cert_type"] == "encryption"
    agent.call("POST", "receipt", {"cert_type": "encryption", "serial": install["serial"]})
    assert agent.call("GET", "task").json["task"] == "done"
    assert count(approval_app.instance, certificate) == 2


def test_withdrawing_while_waiting_for_approval_stops_cleanly(approval_app: Any) -> None:
    browser, wf_id, agent, _ = _up_to_approval(approval_app)
    assert page_action(browser, wf_id, "withdraw").status_code == 303
    task = agent.call("GET", "task").json
    assert task["task"] == "failed" and "you withdrew the request" in task["message"]
    assert "you withdrew the request" in browser.get(f"/deeplink/workflow/{wf_id}").text
    assert count(approval_app.instance, certificate) == 1  # only the installed logon certificate


def test_ra_operator_approves_on_the_approvals_page(approval_app: Any) -> None:
    _, wf_id, agent, child_id = _up_to_approval(approval_app)
    bob = Browser(approval_app, "bob")
    choice = bob.get("/login").text
    chosen = bob.post("/login", {"csrf_token": bob.csrf(choice), "role": "RA Operator"})
    assert chosen.status_code == 303
    page = bob.get("/approvals").text
    assert "Approvals" in page and f'id="request-{child_id}"' in page
    assert "CN=Alice Example" in page and "RSA-2048" in page
    version = re.search(rf'id="request-{child_id}".*?name="version" value="(\d+)"', page, re.S)
    assert version
    no_reason = bob.post(f"/approvals/{child_id}", {"csrf_token": bob.csrf(page), "version": version.group(1),
                                                     "decision": "reject", "text": ""})
    assert no_reason.status_code == 400
    done = bob.post(f"/approvals/{child_id}", {"csrf_token": bob.csrf(page), "version": version.group(1),
                                                "decision": "approve", "text": "checked with alice"})
    assert done.status_code == 303
    # The status comes from the session (once), not from the URL.
    assert done.headers["Location"].endswith("/approvals")
    after = bob.get("/approvals").text
    assert "Nothing is waiting for approval." in after and f"Request {child_id}: approved." in after
    assert f"Request {child_id}: approved." not in bob.get("/approvals").text
    forged = bob.get("/approvals?done=Your+session+expired:+log+in+at+evil.example").text
    assert "evil.example" not in forged
    assert agent.call("GET", "task").json["task"] == "install_certificate"
    alice = Browser(approval_app, "alice")
    assert alice.get("/approvals").status_code in (303, 403)  # users have no approvals page


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_card_swapped_after_confirmation_is_refused(app: Any) -> None:
    browser, wf_id, agent = confirmed_agent(app, "CARD-1")
    task = agent.call("GET", "task").json
    swapped = agent.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"],
                                         "csr": make_csr(rsa.generate_private_key(65537, 2048)),
                                         "token_serial": "CARD-2"})
    assert (swapped.status_code, swapped.json["error"]["code"]) == (409, "token.mismatch")
    assert count(app.instance, certificate) == 0


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_my_certificates_lists_only_mine(app: Any) -> None:
    _, _, serials = _personalize_fully(app, "CARD-MINE")
    alice = Browser(app, "alice")
    page = alice.get("/certificates").text
    assert all(s in page for s in serials) and "CARD-MINE" in page and "smartcard_logon" in page
    assert 'href="/certificates"' in page or "My certificates" in page
    assert alice.get(f"/certificates/{serials[0]}.pem").data.startswith(b"-----BEGIN CERTIFICATE-----")
    bob = Browser(app, "bob")
    assert "You have no certificates yet." in bob.get("/certificates").text
    assert bob.get(f"/certificates/{serials[0]}.pem").status_code == 404  # not bob's


def _copy_pending_request(inst: Any, child_id: int, copies: int) -> None:
    """More requests waiting for approval, each a copy of a real one (row, context, history)."""
    from openxpki_py.workflow import store

    with inst.services.db.begin() as conn:
        row = store.read_workflow(conn, child_id)
        context = store.load_context(conn, child_id)
        now = datetime.now(timezone.utc)
        for _ in range(copies):
            wf_id = store.insert_workflow(
                conn, wf_type=row["wf_type"], state=row["state"], proc_state="manual", creator=row["creator"],
                creator_role=row["creator_role"], parent_id=None, claimed_by=None, lease_until=None,
                created_at=now, updated_at=now)
            store.save_context(conn, wf_id, context, (), stored=())
            store.add_history(conn, wf_id, action="create", from_state="(new)", to_state=row["state"],
                              actor=row["creator"], role=row["creator_role"], outcome="ok", note=None, now=now)


def test_approvals_page_queries_do_not_grow_with_pending_requests(approval_app: Any) -> None:
    from sqlalchemy import event

    _, _, _, child_id = _up_to_approval(approval_app)
    bob = Browser(approval_app, "bob")
    bob.post("/login", {"csrf_token": bob.csrf(bob.get("/login").text), "role": "RA Operator"})
    db = approval_app.instance.services.db

    def statements_for_page() -> tuple[int, str]:
        seen: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        event.listen(db, "before_cursor_execute", record)
        try:
            page = bob.get("/approvals")
        finally:
            event.remove(db, "before_cursor_execute", record)
        assert page.status_code == 200, page.text
        return len(seen), page.text

    statements_for_page()  # warm-up: the session's first refresh after the role choice
    one, page = statements_for_page()
    assert page.count('class="request"') == 1
    _copy_pending_request(approval_app.instance, child_id, 9)
    ten, page = statements_for_page()
    assert page.count('class="request"') == 10
    assert ten == one, (one, ten)


# --- the enrollment code is a bearer secret: the browser decides which agent acts -----------------


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_stolen_code_gets_the_attacker_nothing_without_the_victims_yes_to_his_phrase(app: Any) -> None:
    browser, wf_id, code = start(app)
    attacker = Agent(app, {"REMOTE_ADDR": "192.0.2.66"})
    assert attacker.enroll(code).status_code == 200  # shoulder-surfed, and faster
    assert attacker.call("POST", "token", {"serial": "ALICECARD"}).json == AWAITING
    victim = Agent(app)
    used = victim.enroll(code)
    assert (used.status_code, used.json["error"]["code"]) == (409, "enroll.code_used")

    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "ALICECARD" in page  # her card, as the attacker claims it …
    shown = PHRASE_RE.search(page)
    assert shown and shown.group(1) == attacker.phrase  # … but the attacker's words, which her agent never printed
    refused = attacker.call("POST", "csr", {"cert_type": "authentication", "key_id": "01",
                                            "csr": make_csr(rsa.generate_private_key(65537, 2048))})
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "agent.unconfirmed")
    assert attacker.call("GET", "task").json["task"] == "wait"
    # Her agent showed no phrase ("code already used"): she says no, and the attacker's credential ends.
    assert page_action(browser, wf_id, "reject_token").status_code == 303
    gone = attacker.call("GET", "task")
    assert (gone.status_code, gone.json["error"]["code"]) == (401, "auth.token_expired")
    assert count(app.instance, certificate) == 0


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_confirming_needs_the_agent_the_page_showed(app: Any) -> None:
    browser, wf_id, code = start(app)
    agent = Agent(app)
    agent.enroll(code)
    agent.call("POST", "token", {"serial": "ALICECARD"})
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    version = re.search(r'name="version" value="(\d+)"', page)
    assert version
    wrong = browser.post(f"/personalize/{wf_id}/action", {
        "csrf_token": browser.csrf(page), "mode": "deeplink", "action": "confirm_token",
        "version": version.group(1), "agent": "999999"})
    assert wrong.status_code == 409 and "agent.replaced" in wrong.text
    missing = browser.post(f"/personalize/{wf_id}/action", {
        "csrf_token": browser.csrf(page), "mode": "deeplink", "action": "confirm_token",
        "version": version.group(1)})
    assert missing.status_code == 409
    assert agent.call("GET", "task").json["reason"] == "confirm the card in your browser"
    confirm(browser, wf_id)
    assert agent.call("GET", "task").json["task"] == "generate_key"


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_leaving_the_page_ends_its_unused_code(app: Any) -> None:
    browser, wf_id, code = start(app)
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert browser.post(f"/personalize/{wf_id}/code/discard", {"csrf_token": browser.csrf(page)}).status_code == 204
    ended = Agent(app).enroll(code)
    assert (ended.status_code, ended.json["error"]["code"]) == (401, "enroll.code_expired")
    assert browser.post(f"/personalize/{wf_id}/code/discard", {}).status_code == 403  # CSRF, as every POST


# --- rate limits: wrong codes are limited, a right code never is ------------------------------------


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_wrong_codes_from_an_address_do_not_block_a_right_code_from_it(app: Any) -> None:
    office = {"REMOTE_ADDR": "198.51.100.7"}  # one NAT address for the whole office
    _, _, code = start(app)
    limit = app.instance.config.personalization.enrollment.max_failures
    answers = [Agent(app, office).enroll("ZZZZZ-WRONG-CODES-ZZZZ").json["error"]["code"] for _ in range(limit + 2)]
    assert answers[:limit] == ["enroll.code_invalid"] * limit and answers[limit:] == ["enroll.rate_limited"] * 2
    assert Agent(app, office).enroll(code).status_code == 200  # a colleague's right code still works


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_guesses_aimed_at_one_code_end_that_code_from_any_address(app: Any) -> None:
    _, _, code = start(app)
    per_code = app.instance.config.personalization.enrollment.max_code_failures
    normalized = code.replace("-", "")
    for n in range(per_code):  # the code's first characters, a wrong rest, from many addresses
        wrong = normalized[:4] + ("A" if normalized[4] != "A" else "B") + normalized[5:]
        answer = Agent(app, {"REMOTE_ADDR": f"203.0.113.{n + 1}"}).enroll(wrong)
        assert answer.json["error"]["code"] == "enroll.code_invalid"
    ended = Agent(app).enroll(code)
    assert (ended.status_code, ended.json["error"]["code"]) == (401, "enroll.code_expired")


def _wrong_code_via_proxy(app: Any, client: str) -> str:
    """A wrong code through a reverse proxy at 10.9.0.2 that says the client was ``client``."""
    answer = Client(app).post("/api/v1/enroll", json={"code": "WRONG", "agent_key": public_key_text(new_agent_key())},
                              headers={"X-Forwarded-For": f"{client}, 10.9.0.3"},
                              environ_overrides={"REMOTE_ADDR": "10.9.0.2"})
    return str(answer.json["error"]["code"])


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_forwarded_for_is_ignored_unless_the_proxy_is_configured(app: Any) -> None:
    limit = app.instance.config.personalization.enrollment.max_failures
    codes = [_wrong_code_via_proxy(app, f"198.51.100.{n}") for n in range(limit + 1)]
    assert codes[-1] == "enroll.rate_limited"  # the header is anyone's claim: all count for the proxy


def test_forwarded_for_names_the_client_behind_a_configured_proxy(make_instance: Callable[..., Any],
                                                                   sqlite_engine: Any) -> None:
    def behind_proxy(settings: dict[str, Any]) -> None:
        settings["web"]["trusted_proxies"] = ["10.9.0.0/24"]

    inst = make_instance(sqlite_engine, overrides=behind_proxy)
    app = create_app(inst.config, inst.services)
    limit = inst.config.personalization.enrollment.max_failures
    assert {_wrong_code_via_proxy(app, f"198.51.100.{n}") for n in range(limit + 1)} == {"enroll.code_invalid"}
    assert [_wrong_code_via_proxy(app, "198.51.100.200") for _ in range(limit + 1)][-1] == "enroll.rate_limited"
    assert _wrong_code_via_proxy(app, "198.51.100.201") == "enroll.code_invalid"


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_unproven_claim_on_a_serial_lapses_and_issued_keys_are_marked_unattested(app: Any) -> None:
    # mallory's script reports alice's new card serial and mallory confirms it: no certificate
    # is ever issued for it under his claim.  alice must not wait for the help desk for ever.
    confirmed_agent(app, "ALICE-NEW-CARD", login="bob")
    browser, wf_id, code = start(app, "alice")
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    refused = agent.call("POST", "token", {"serial": "ALICE-NEW-CARD"})
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "token.owned_by_other")
    # A day later (the default unproven_claim_lifetime) the claim has lapsed.
    with app.instance.services.db.begin() as conn:
        conn.execute(update(token).where(token.c.serial == "ALICE-NEW-CARD").values(
            last_seen=datetime.now(timezone.utc) - timedelta(days=2)))
    assert agent.call("POST", "token", {"serial": "ALICE-NEW-CARD"}).status_code == 200
    confirm(browser, wf_id)
    with app.instance.services.db.connect() as conn:
        assert conn.execute(select(token.c.owner).where(token.c.serial == "ALICE-NEW-CARD")).scalar() == "alice"
        lapsed = conn.execute(select(audit_log.c.details).where(audit_log.c.event == "token.claim_lapsed")).all()
    assert [row.details["previous_owner"] for row in lapsed] == ["bob"]
    # The certificates say what nobody can prove yet: the key's origin on a card.
    task = agent.call("GET", "task").json
    key = rsa.generate_private_key(65537, 2048)
    posted = agent.call("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"],
                                        "csr": make_csr(key)})
    assert posted.status_code in (200, 202), posted.json
    with app.instance.services.db.connect() as conn:
        origins = [r.key_origin for r in conn.execute(select(certificate.c.key_origin))]
    assert origins == ["card-unattested"]
    # Once a certificate was issued for the card, alice's claim no longer lapses for anyone.
    with app.instance.services.db.begin() as conn:
        conn.execute(update(token).where(token.c.serial == "ALICE-NEW-CARD").values(
            last_seen=datetime.now(timezone.utc) - timedelta(days=30)))
    _, _, code = start(app, "carol")
    carols = Agent(app)
    assert carols.enroll(code).status_code == 200
    assert carols.call("POST", "token", {"serial": "ALICE-NEW-CARD"}).json["error"]["code"] == "token.owned_by_other"


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_personalization_nobody_continues_ends_by_itself(app: Any) -> None:
    """Every wait for the user or the agent has a deadline: the worker ends it, visibly, and codes die."""
    from openxpki_py.db.schema import workflow

    browser, wf_id, code = start(app, "alice")
    engine = app.instance.services.workflows
    assert engine.get(wf_id).wake_at is not None  # the deadline is set on arrival (an hour by default)
    with app.instance.services.db.begin() as conn:  # an hour later
        conn.execute(update(workflow).where(workflow.c.id == wf_id).values(
            wake_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert engine.resume_due() == 1
    ended = engine.get(wf_id)
    assert (ended.state, ended.context["failure"]["code"]) == ("FAILED", "personalization.expired")
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "nothing happened for too long while waiting for your card to be reported" in page
    agent = Agent(app)
    assert agent.enroll(code).status_code in (401, 409)  # the code died with it
    # The next visit starts a new personalization (one per person: the old one is final).
    assert start(app, "alice")[1] != wf_id
