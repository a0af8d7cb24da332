"""Per-card admin credentials: the master secret in SoftHSM, derivation by the HSM, release to the agent.

The real agent with a virtual PIV card through pcscd is
tests/integration/test_agent_piv_card.py; here the server side alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from openxpki_py_token.pkcs11.module import get_module
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11_exc
from sqlalchemy import select
from support.races import then_wait
from support.softhsm import SoftHSMToken

from openxpki_py.configreader import Reader
from openxpki_py.crypto.card_admin import (
    CardAdminSecret,
    derivation_input,
    parse_card_admin_config,
)
from openxpki_py.crypto.keys import parse_key_config
from openxpki_py.audit import verify_chain
from openxpki_py.db.schema import audit_log, audit_pending
from openxpki_py.errors import ConfigError, TokenError, TokenKeyNotFound
from openxpki_py.web.app import create_app

from test_fuzz_inputs import _at_once
from test_personalization_server import Agent, confirm, start

pytestmark = pytest.mark.usefixtures("pkcs11_session_leak_check")


@pytest.fixture
def tokens(make_token: Callable[..., SoftHSMToken]) -> tuple[SoftHSMToken, SoftHSMToken]:
    """Two CA tokens, both made before the module is loaded (SoftHSM sees only those)."""
    return make_token("ca-admin"), make_token("ca-admin-2")


@pytest.fixture
def secret(tokens: tuple[SoftHSMToken, SoftHSMToken]) -> Any:
    token = tokens[0]
    made = CardAdminSecret(module=token.module, token_label=token.label, pin=token.pin_ref(),
                           key_label="ca-signing-card-admin")
    made.create()
    yield made
    made.close()


def test_derivation_is_per_card_per_kind_and_stable(secret: CardAdminSecret,
                                                    tokens: tuple[SoftHSMToken, SoftHSMToken]) -> None:
    one = secret.card_admin_credentials("piv", "12345678")
    assert one.values == secret.card_admin_credentials("piv", "12345678").values  # deterministic
    key, puk = one.values["management_key"], one.values["puk"]
    assert isinstance(key, bytes) and len(key) == 24
    assert isinstance(puk, str) and len(puk) == 8 and puk.isdigit()
    other = secret.card_admin_credentials("piv", "12345679")
    assert other.values["management_key"] != key and other.values["puk"] != puk
    # Kinds and card types are separate inputs: no value repeats across them.
    pgp = secret.card_admin_credentials("openpgp", "12345678")
    assert set(pgp.values) == {"admin_pin"} and pgp.values["admin_pin"] != puk
    assert secret.derive("piv", "puk", "1") != secret.derive("piv", "management_key", "1")
    assert secret.derive("piv", "puk", "1") != secret.derive("openpgp", "puk", "1")
    # NUL ends each part: kind "puk" + serial "1" and kind "puk1" + serial "" cannot collide.
    assert derivation_input("piv", "puk", "1") != derivation_input("piv", "puk1", "")
    with pytest.raises(ValueError):
        derivation_input("piv", "puk", "a\x00b")
    # repr never shows the values
    assert key.hex() not in repr(one) and puk not in str(one)
    # Another token's master gives other values: the master is the secret, not the scheme.
    token2 = tokens[1]
    second = CardAdminSecret(module=token2.module, token_label=token2.label, pin=token2.pin_ref(),
                             key_label="ca-signing-card-admin")
    try:
        second.create()
        assert second.card_admin_credentials("piv", "12345678").values != one.values
    finally:
        second.close()
    with pytest.raises(TokenError) as refused:
        secret.card_admin_credentials("generic", "1")
    assert refused.value.code == "card.admin_credentials_unsupported"


def test_master_secret_never_leaves_the_hsm(secret: CardAdminSecret) -> None:
    flags = secret.protection()
    assert flags["sensitive"] and flags["always_sensitive"] and flags["never_extractable"] and flags["local"]
    assert not flags["extractable"] and not flags["encrypt"] and not flags["derive"] and flags["sign"]
    # Asked directly through PKCS#11, the token refuses to show the value or wrap it out.
    module = get_module(secret.module_path)
    token = module.lib().get_token(token_label=secret.token_label)
    with token.open() as session:  # the pool's login covers every session of this process
        [key] = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: secret.key_label})
        with pytest.raises(p11_exc.AttributeSensitive):
            key[Attribute.VALUE]
        assert key[Attribute.EXTRACTABLE] is False
    with pytest.raises(TokenError) as again:
        secret.create()
    assert again.value.code == "token.key_exists"


def test_missing_master_secret_says_how_to_create_it(make_token: Callable[..., SoftHSMToken]) -> None:
    token = make_token("ca-empty")
    empty = CardAdminSecret(module=token.module, token_label=token.label, pin=token.pin_ref(), key_label="x")
    try:
        assert not empty.exists()
        with pytest.raises(TokenKeyNotFound, match="card-admin-init") as missing:
            empty.card_admin_credentials("piv", "1")
        assert missing.value.code == "card.admin_secret_missing"
    finally:
        empty.close()


def test_config_needs_the_ca_key_in_an_hsm(tmp_path: Any) -> None:
    software = parse_key_config(Reader({"backend": "software", "algorithm": "rsa-2048", "path": "k.pem",
                                        "password_env": "X"}, "ca.key", tmp_path))
    with pytest.raises(ConfigError, match="card_admin.enabled"):
        parse_card_admin_config(Reader({"enabled": True}, "card_admin"), software)
    hsm = parse_key_config(Reader({"backend": "pkcs11", "algorithm": "rsa-2048", "module": "/m.so",
                                   "token_label": "t", "key_label": "ca", "pin_env": "X"}, "ca.key", tmp_path))
    cfg = parse_card_admin_config(Reader({"enabled": True}, "card_admin"), hsm)
    assert cfg.key_label == "ca-card-admin" and cfg.max_releases == 5 and cfg.token_label == "t"
    with pytest.raises(ConfigError, match="names the CA key"):
        parse_card_admin_config(Reader({"enabled": True, "key_label": "ca"}, "card_admin"), hsm)
    assert not parse_card_admin_config(Reader({}, "card_admin"), software).enabled


# --- release to the agent -----------------------------------------------------------------


def _app(make_instance: Callable[..., Any], engine: Any) -> Any:
    inst = make_instance(engine, overrides=lambda s: s.update(card_admin={"enabled": True, "max_releases": 2}))
    application = create_app(inst.config, inst.services)
    application.instance = inst  # type: ignore[attr-defined]
    return application


@pytest.fixture
def app(make_instance: Callable[..., Any], sqlite_engine: Any) -> Any:
    return _app(make_instance, sqlite_engine)


def _confirmed_piv_agent(app: Any) -> tuple[int, Agent]:
    """A personalization whose agent reported PIV card 55501234 and the user confirmed it: (workflow id, agent)."""
    browser, wf_id, code = start(app)
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    assert agent.call("POST", "token", {"serial": "55501234", "card_profile": "piv"}).status_code == 200
    confirm(browser, wf_id)
    return wf_id, agent


def _audit(app: Any) -> list[Any]:
    with app.instance.services.db.connect() as conn:
        return list(conn.execute(select(audit_log).where(audit_log.c.event == "card.admin_credentials")
                                 .order_by(audit_log.c.id)).mappings())


def _dump(app: Any) -> str:
    """Every row of every table, as text (what a database backup would hold)."""
    raw = app.instance.services.db.raw_connection()
    try:
        return "\n".join(raw.driver_connection.iterdump())
    finally:
        raw.close()


def test_released_only_to_the_confirmed_agent_for_the_confirmed_card(app: Any) -> None:
    browser, wf_id, code = start(app)
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    assert agent.call("POST", "token", {"serial": "55501234", "card_profile": "piv"}).status_code == 200
    early = agent.call("POST", "card-credentials", {"token_serial": "55501234"})
    assert early.status_code == 403 and early.json["error"]["code"] == "agent.unconfirmed"
    confirm(browser, wf_id)
    stranger = Agent(app)  # no credential at all
    assert stranger.call("POST", "card-credentials", {"token_serial": "55501234"}).status_code == 401
    other_card = agent.call("POST", "card-credentials", {"token_serial": "55509999"})
    assert other_card.status_code == 409 and other_card.json["error"]["code"] == "token.mismatch"
    missing = agent.call("POST", "card-credentials", {})
    assert missing.status_code == 400

    answer = agent.call("POST", "card-credentials", {"token_serial": "55501234"})
    assert answer.status_code == 200, answer.json
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json
    expected = app.instance.services.card_admin.card_admin_credentials("piv", "55501234")
    assert body == {"card_type": "piv", "serial": "55501234", "credentials": expected.as_api()}
    assert agent.call("POST", "card-credentials", {"token_serial": "55501234"}).json == body
    limit = agent.call("POST", "card-credentials", {"token_serial": "55501234"})
    assert limit.status_code == 403 and limit.json["error"]["code"] == "card.admin_credentials_limit"

    rows = _audit(app)
    released = [r for r in rows if r["outcome"] == "ok"]
    assert len(released) == 2 and all(r["target"] == f"workflow:{wf_id}" and r["actor"] == "alice" for r in released)
    assert released[0]["details"] == {"card": "55501234", "card_type": "piv", "kinds": ["management_key", "puk"]}
    assert [r["details"]["code"] for r in rows if r["outcome"] == "refused"] == ["card.admin_credentials_limit"]
    # Never stored: not in any table (audit, workflow context, history), in any spelling.
    dump = _dump(app)
    values = body["credentials"]
    for value in (values["management_key"], values["management_key"].upper(), values["puk"]):
        assert value not in dump
    assert json.dumps(values) not in dump


def test_a_generic_token_has_no_admin_credentials(app: Any) -> None:
    browser, wf_id, code = start(app)
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    assert agent.call("POST", "token", {"serial": "SOFT0001"}).status_code == 200
    confirm(browser, wf_id)
    refused = agent.call("POST", "card-credentials", {"token_serial": "SOFT0001"})
    assert refused.status_code == 403 and refused.json["error"]["code"] == "card.admin_credentials_unsupported"
    assert [r["outcome"] for r in _audit(app)] == ["refused"]


def test_a_server_without_the_feature_says_so(make_instance: Callable[..., Any], sqlite_engine: Any) -> None:
    inst = make_instance(sqlite_engine)
    app = create_app(inst.config, inst.services)
    browser, wf_id, code = start(app)
    agent = Agent(app)
    assert agent.enroll(code).status_code == 200
    assert agent.call("POST", "token", {"serial": "55501234", "card_profile": "piv"}).status_code == 200
    confirm(browser, wf_id)
    off = agent.call("POST", "card-credentials", {"token_serial": "55501234"})
    assert off.status_code == 404 and off.json["error"]["code"] == "card.admin_credentials_off"


def test_cli_creates_the_master_secret_once(make_instance: Callable[..., Any], sqlite_engine: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    cli = [str(Path(sys.executable).parent / "openxpki-py")]
    off = make_instance(sqlite_engine, init_ca=False)
    refused = subprocess.run([*cli, "--config", str(off.config_path), "ca", "card-admin-init"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 3 and "card_admin.enabled is false" in refused.stderr
    inst = make_instance(sqlite_engine, init_ca=False, overrides=lambda s: s.update(card_admin={"enabled": True}))
    argv = [*cli, "--config", str(inst.config_path), "--actor", "setup", "ca", "card-admin-init"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "'ca-signing-card-admin'" in first.stdout and "CKA_NEVER_EXTRACTABLE: True" in first.stdout
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0 and "exists already; it is never replaced" in again.stdout
    with inst.services.db.connect() as conn:
        created = list(conn.execute(select(audit_log).where(audit_log.c.event == "card.admin_secret")).mappings())
    assert [(r["actor"], r["target"]) for r in created] == [("setup", "ca-signing-card-admin")]
    inst.reload()  # a fresh process's view of the token
    assert inst.services.card_admin.exists()


@pytest.mark.postgres
def test_calls_at_once_get_no_more_releases_than_allowed_on_postgresql(
        make_instance: Callable[..., Any], pg_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count and record are one step: three calls at once, two releases (max_releases), every call audited."""
    from openxpki_py.personalization import card_credentials

    app = _app(make_instance, pg_engine)
    wf_id, agent = _confirmed_piv_agent(app)
    # Make the race certain: each call, having counted, waits for the others to have counted too (or 3 s).
    monkeypatch.setattr(card_credentials, "releases_so_far",
                        then_wait(card_credentials.releases_so_far, threading.Barrier(3, timeout=3)))

    def ask() -> Any:
        return agent.twin().call(  # a client per thread, the same agent credential
            "POST", "card-credentials", {"token_serial": "55501234"})
    answers = _at_once(3, ask)
    assert sorted(a.status_code for a in answers) == [200, 200, 403], [a.json for a in answers]
    assert {a.json["error"]["code"] for a in answers if a.status_code == 403} == {"card.admin_credentials_limit"}
    # Each call chained its audit row before it answered: all three are in the chain, none queued.
    assert sorted(r["outcome"] for r in _audit(app)) == ["ok", "ok", "refused"]
    with pg_engine.connect() as conn:
        assert conn.execute(select(audit_pending)).first() is None
        assert verify_chain(conn).ok


def test_a_personalization_ended_meanwhile_gets_no_release_on_postgresql(
        make_instance: Callable[..., Any], pg_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state that decides is the one under the workflow's lock, not the view read before (review finding)."""
    from openxpki_py.db.schema import workflow
    from openxpki_py.personalization import card_credentials

    app = _app(make_instance, pg_engine)
    wf_id, agent = _confirmed_piv_agent(app)
    check = card_credentials.check_release

    def check_then_end_it(view: Any, token_serial: str | None) -> Any:
        passed = check(view, token_serial)  # the view still says: making keys
        with pg_engine.begin() as other:  # meanwhile the user cancels in the browser (committed)
            other.execute(workflow.update().where(workflow.c.id == wf_id)
                          .values(state="CANCELLED", proc_state="finished"))
        return passed
    monkeypatch.setattr(card_credentials, "check_release", check_then_end_it)
    answer = agent.call("POST", "card-credentials", {"token_serial": "55501234"})
    assert answer.status_code == 409 and answer.json["error"]["code"] == "card.admin_credentials_state", answer.json
    assert [r["outcome"] for r in _audit(app)] == ["refused"]
